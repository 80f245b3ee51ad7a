// Domain boundaries as a kernel reads them: domain e owns rows [off(e), off(e+1)). With few
// domains they travel by value in the launch's arguments, so a call needs no host-to-device
// copy of the offsets (a pinned buffer and a copy per call, which on a GPU cost as much as a
// small kernel); with more, from an array on the kernel's device.
#pragma once
#include "hostdevice.h"

namespace hessalign {

constexpr int kInlineDomains = 64;

struct DomainOffsets {
  const int64_t* array;                   // E+1 offsets on the kernel's device, or nullptr: inline
  int64_t inline_off[kInlineDomains + 1];  // used when array is nullptr
  index_t E;
  HE_INLINE int64_t operator()(index_t e) const { return array ? array[e] : inline_off[e]; }
};

}  // namespace hessalign
