// The fingerprint of what this build's CUDA kernels are made from: setup.py passes it to nvcc
// (FUSEDRNN_CUDA_SOURCES, a digest of csrc/cuda, the shared headers csrc/*.h and the nvcc
// release), and fusedrnn._C.CUDA_SOURCES exposes it.  A GPU validation of the cuda backend
// counts only for this fingerprint (fusedrnn/ops/evidence.py).  No dimensions here.
#define FUSEDRNN_BUILD_INFO_STR_(...) #__VA_ARGS__
#define FUSEDRNN_BUILD_INFO_STR(...) FUSEDRNN_BUILD_INFO_STR_(__VA_ARGS__)

namespace fusedrnn::cuda {

const char* sources_fingerprint() {
#ifdef FUSEDRNN_CUDA_SOURCES
  return FUSEDRNN_BUILD_INFO_STR(FUSEDRNN_CUDA_SOURCES);
#else
  return "";
#endif
}

}  // namespace fusedrnn::cuda
