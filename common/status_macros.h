// Status propagation macros. Debian 12's Abseil (20220623) has no RETURN_IF_ERROR /
// ASSIGN_OR_RETURN, so kbitd keeps its own.
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define KBITD_CONCAT_INNER_(a, b) a##b
#define KBITD_CONCAT_(a, b) KBITD_CONCAT_INNER_(a, b)

// Returns the status from the enclosing function if `expr` is not OK.
#define KBITD_RETURN_IF_ERROR(expr)                \
  do {                                             \
    ::absl::Status kbitd_status_ = (expr);         \
    if (!kbitd_status_.ok()) return kbitd_status_; \
  } while (0)

// `KBITD_ASSIGN_OR_RETURN(auto x, MakeX());` declares/assigns `x` from an OK StatusOr, or returns
// its status from the enclosing function.
#define KBITD_ASSIGN_OR_RETURN(lhs, expr) \
  KBITD_ASSIGN_OR_RETURN_IMPL_(KBITD_CONCAT_(kbitd_statusor_, __LINE__), lhs, expr)

#define KBITD_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, expr)  \
  auto statusor = (expr);                                  \
  if (!statusor.ok()) return std::move(statusor).status(); \
  lhs = std::move(statusor).value()
