// An on/off environment setting of the ops (HESSALIGN_ALIGN_ROWS, HESSALIGN_LOGITS_KERNEL): "1" on,
// "0" off, unset or empty: the caller's rule decides. Any other value raises ValueError naming the
// variable and its values, so that a misspelt setting is not taken as the default.
#pragma once
#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>
#include <optional>

namespace hessalign {

// `values` says what the variable takes, for the error: e.g. "1 (on), 0 (off) or unset (the size rule)".
inline std::optional<bool> env_switch(const char* name, const char* values) {
  const char* env = std::getenv(name);
  if (!env || env[0] == '\0') return std::nullopt;
  TORCH_CHECK_VALUE(std::strcmp(env, "1") == 0 || std::strcmp(env, "0") == 0, name, " must be ", values, "; got '",
                    env, "'");
  return env[0] == '1';
}

}  // namespace hessalign
