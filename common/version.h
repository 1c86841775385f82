// The version and git revision the programs were built from (cmake/KbitdVersion.cmake), and the
// --help / --version handling kbitd, kbitctl and kbitq share.
#pragma once

#include <string>
#include <string_view>

namespace kbitd {

// The project version, e.g. "0.1.0".
std::string_view Version();
// The git revision the build was configured from (short hash), or "unknown".
std::string_view Revision();
// What --version prints: "kbitq 0.1.0 (revision 1a2b3c4)".
std::string VersionLine(std::string_view program);

// Before a program parses its flags: with --help or -h anywhere before a "--" argument, prints
// `usage` to stdout; with --version, prints VersionLine(program). Returns the exit status for
// main (0) then, and -1 when neither was given; in that case it has also given `usage` and the
// version line to Abseil's flags library, for its own usage flags (--helpfull, --helpshort).
int HandleHelpAndVersion(int argc, char** argv, std::string_view program, std::string_view usage);

}  // namespace kbitd
