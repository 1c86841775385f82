# The version and git revision that kbitd, kbitctl and kbitq print for --version, written at
# configure time into ${PROJECT_BINARY_DIR}/generated/kbitd_version_info.h (only when they change,
# so only common/version.cc recompiles and the three programs relink).
#
# KBITD_VERSION   default: project(kbitd VERSION ...). The Dockerfile passes its VERSION build arg.
# KBITD_REVISION  default: `git rev-parse --short HEAD` of this source tree, or "unknown" outside a
#                 git checkout (a source tarball, the image build: .dockerignore leaves .git out;
#                 the Dockerfile passes its REVISION build arg instead).
# In a checkout, CMake re-runs this when HEAD or the branch it names moves (a commit, a checkout),
# so a plain `cmake --build` reports the revision it was built from.
set(KBITD_VERSION "" CACHE STRING "Version to report (empty: the project version)")
set(KBITD_REVISION "" CACHE STRING "Revision to report (empty: git rev-parse --short HEAD)")

set(kbitd_version "${KBITD_VERSION}")
if(kbitd_version STREQUAL "")
  set(kbitd_version "${PROJECT_VERSION}")
endif()

set(kbitd_revision "${KBITD_REVISION}")
if(kbitd_revision STREQUAL "")
  set(kbitd_revision "unknown")
  find_package(Git QUIET)
  if(GIT_FOUND)
    # Only this tree's own repository: a tarball unpacked inside some other checkout must not
    # report that checkout's commit.
    execute_process(COMMAND "${GIT_EXECUTABLE}" rev-parse --show-toplevel --short HEAD
                    WORKING_DIRECTORY "${PROJECT_SOURCE_DIR}"
                    OUTPUT_VARIABLE git_out RESULT_VARIABLE git_rc ERROR_QUIET
                    OUTPUT_STRIP_TRAILING_WHITESPACE)
    if(git_rc EQUAL 0)
      string(REPLACE "\n" ";" git_out "${git_out}")
      list(GET git_out 0 git_toplevel)
      list(GET git_out 1 git_head)
      file(REAL_PATH "${git_toplevel}" git_toplevel)
      file(REAL_PATH "${PROJECT_SOURCE_DIR}" source_dir)
      if(git_toplevel STREQUAL source_dir)
        set(kbitd_revision "${git_head}")
        # Reconfigure when HEAD moves: HEAD itself (checkout), the branch file (commit) and
        # packed-refs (gc, fetch). `--git-path` finds them in worktrees too.
        execute_process(COMMAND "${GIT_EXECUTABLE}" symbolic-ref -q HEAD
                        WORKING_DIRECTORY "${PROJECT_SOURCE_DIR}"
                        OUTPUT_VARIABLE git_ref ERROR_QUIET OUTPUT_STRIP_TRAILING_WHITESPACE)
        set(git_paths HEAD packed-refs)
        if(NOT git_ref STREQUAL "")
          list(APPEND git_paths "${git_ref}")
        endif()
        foreach(git_path ${git_paths})
          execute_process(COMMAND "${GIT_EXECUTABLE}" rev-parse --path-format=absolute
                                  --git-path "${git_path}"
                          WORKING_DIRECTORY "${PROJECT_SOURCE_DIR}"
                          OUTPUT_VARIABLE file ERROR_QUIET OUTPUT_STRIP_TRAILING_WHITESPACE)
          if(NOT file STREQUAL "" AND EXISTS "${file}")
            set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS "${file}")
          endif()
        endforeach()
      endif()
    endif()
  endif()
endif()
message(STATUS "kbitd version ${kbitd_version}, revision ${kbitd_revision}")

set(KBITD_GENERATED_DIR "${PROJECT_BINARY_DIR}/generated")
configure_file("${CMAKE_CURRENT_LIST_DIR}/kbitd_version_info.h.in"
               "${KBITD_GENERATED_DIR}/kbitd_version_info.h" @ONLY)
