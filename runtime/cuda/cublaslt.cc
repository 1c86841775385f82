#include "runtime/cuda/cublaslt.h"

#include <cublasLt.h>
#include <cuda_runtime.h>
#include <dlfcn.h>

#include <mutex>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "quant/cuda/cuda_check.h"

namespace kbitd::runtime::cuda {
namespace {

// The cuBLASLt entry points kbitd uses, resolved from the shared library.
struct CublasLtApi {
  decltype(&cublasLtCreate) create;
  decltype(&cublasLtDestroy) destroy;
  decltype(&cublasLtMatmulDescCreate) desc_create;
  decltype(&cublasLtMatmulDescDestroy) desc_destroy;
  decltype(&cublasLtMatmulDescSetAttribute) desc_set;
  decltype(&cublasLtMatrixLayoutCreate) layout_create;
  decltype(&cublasLtMatrixLayoutDestroy) layout_destroy;
  decltype(&cublasLtMatmulPreferenceCreate) pref_create;
  decltype(&cublasLtMatmulPreferenceDestroy) pref_destroy;
  decltype(&cublasLtMatmulPreferenceSetAttribute) pref_set;
  decltype(&cublasLtMatmulAlgoGetHeuristic) heuristic;
  decltype(&cublasLtMatmul) matmul;
};

absl::StatusOr<const CublasLtApi*> LoadApi() {
  static absl::StatusOr<CublasLtApi> api = []() -> absl::StatusOr<CublasLtApi> {
    void* lib = nullptr;
    for (const char* name : {"libcublasLt.so.13", "libcublasLt.so"}) {
      lib = dlopen(name, RTLD_NOW | RTLD_LOCAL);
      if (lib != nullptr) break;
    }
    if (lib == nullptr) {
      return absl::FailedPreconditionError(absl::StrCat(
          "cannot load libcublasLt.so.13 (dense GEMMs on the GPU need it): ", dlerror()));
    }
    CublasLtApi a{};
    bool missing = false;
    auto resolve = [&](auto* fn, const char* symbol) {
      *fn = reinterpret_cast<std::remove_pointer_t<decltype(fn)>>(dlsym(lib, symbol));
      missing = missing || *fn == nullptr;
    };
    resolve(&a.create, "cublasLtCreate");
    resolve(&a.destroy, "cublasLtDestroy");
    resolve(&a.desc_create, "cublasLtMatmulDescCreate");
    resolve(&a.desc_destroy, "cublasLtMatmulDescDestroy");
    resolve(&a.desc_set, "cublasLtMatmulDescSetAttribute");
    resolve(&a.layout_create, "cublasLtMatrixLayoutCreate");
    resolve(&a.layout_destroy, "cublasLtMatrixLayoutDestroy");
    resolve(&a.pref_create, "cublasLtMatmulPreferenceCreate");
    resolve(&a.pref_destroy, "cublasLtMatmulPreferenceDestroy");
    resolve(&a.pref_set, "cublasLtMatmulPreferenceSetAttribute");
    resolve(&a.heuristic, "cublasLtMatmulAlgoGetHeuristic");
    resolve(&a.matmul, "cublasLtMatmul");
    if (missing) return absl::FailedPreconditionError("libcublasLt lacks a cublasLt* symbol");
    return a;
  }();
  if (!api.ok()) return api.status();
  return &*api;
}

absl::Status BlasStatus(cublasStatus_t status, const char* what) {
  if (status == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  const std::string message = absl::StrCat(what, ": cuBLASLt status ", static_cast<int>(status));
  if (status == CUBLAS_STATUS_ALLOC_FAILED) return absl::ResourceExhaustedError(message);
  if (status == CUBLAS_STATUS_NOT_SUPPORTED || status == CUBLAS_STATUS_INVALID_VALUE) {
    return absl::InvalidArgumentError(message);
  }
  return absl::InternalError(message);
}

absl::StatusOr<cudaDataType_t> DataType(ScalarType dtype) {
  switch (dtype) {
    case ScalarType::kFloat32:
      return CUDA_R_32F;
    case ScalarType::kFloat16:
      return CUDA_R_16F;
    case ScalarType::kBFloat16:
      return CUDA_R_16BF;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("GEMM: ", std::string(TorchDtypeName(dtype)), " is not a float dtype"));
  }
}

constexpr size_t kWorkspaceBytes = 32 << 20;  // what cuBLASLt's Hopper kernels ask for

}  // namespace

absl::StatusOr<std::unique_ptr<CublasLtGemm>> CublasLtGemm::Create() {
  KBITD_ASSIGN_OR_RETURN(const CublasLtApi* api, LoadApi());
  std::unique_ptr<CublasLtGemm> gemm(new CublasLtGemm());
  cublasLtHandle_t handle = nullptr;
  KBITD_RETURN_IF_ERROR(BlasStatus(api->create(&handle), "cublasLtCreate"));
  gemm->handle_ = handle;
  KBITD_RETURN_IF_ERROR(quant::cuda::CudaStatus(cudaMalloc(&gemm->workspace_, kWorkspaceBytes),
                                                "cuBLASLt workspace"));
  gemm->workspace_bytes_ = kWorkspaceBytes;
  return gemm;
}

CublasLtGemm::~CublasLtGemm() {
  if (workspace_ != nullptr) cudaFree(workspace_);
  absl::StatusOr<const CublasLtApi*> api = LoadApi();
  if (handle_ != nullptr && api.ok()) (*api)->destroy(static_cast<cublasLtHandle_t>(handle_));
}

absl::Status CublasLtGemm::Run(const GemmArgs& args, void* stream) {
  KBITD_ASSIGN_OR_RETURN(const CublasLtApi* api, LoadApi());
  KBITD_ASSIGN_OR_RETURN(cudaDataType_t input, DataType(args.input_dtype));
  KBITD_ASSIGN_OR_RETURN(cudaDataType_t output, DataType(args.output_dtype));
  // Column-major view: y^T [n, m] = w [k, n]^T . x^T [k, m], so A = w transposed, B = x as is.
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  auto cleanup = [&] {
    if (pref) api->pref_destroy(pref);
    if (c) api->layout_destroy(c);
    if (b) api->layout_destroy(b);
    if (a) api->layout_destroy(a);
    if (desc) api->desc_destroy(desc);
  };
  absl::Status status = [&]() -> absl::Status {
    KBITD_RETURN_IF_ERROR(
        BlasStatus(api->desc_create(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), "matmul desc"));
    const cublasOperation_t transpose = CUBLAS_OP_T;
    KBITD_RETURN_IF_ERROR(BlasStatus(
        api->desc_set(desc, CUBLASLT_MATMUL_DESC_TRANSA, &transpose, sizeof(transpose)), "transa"));
    KBITD_RETURN_IF_ERROR(
        BlasStatus(api->layout_create(&a, input, args.k, args.n, args.k), "layout w"));
    KBITD_RETURN_IF_ERROR(
        BlasStatus(api->layout_create(&b, input, args.k, args.m, args.k), "layout x"));
    KBITD_RETURN_IF_ERROR(
        BlasStatus(api->layout_create(&c, output, args.n, args.m, args.n), "layout y"));
    KBITD_RETURN_IF_ERROR(BlasStatus(api->pref_create(&pref), "preference"));
    KBITD_RETURN_IF_ERROR(BlasStatus(api->pref_set(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                   &workspace_bytes_, sizeof(workspace_bytes_)),
                                     "workspace preference"));
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    KBITD_RETURN_IF_ERROR(BlasStatus(api->heuristic(static_cast<cublasLtHandle_t>(handle_), desc, a,
                                                    b, c, c, pref, 1, &result, &found),
                                     "cublasLtMatmulAlgoGetHeuristic"));
    if (found == 0) {
      return absl::UnimplementedError(absl::StrCat("cuBLASLt has no algorithm for a ", args.m, "x",
                                                   args.n, "x", args.k, " GEMM"));
    }
    const float alpha = 1.0f, beta = 0.0f;
    return BlasStatus(api->matmul(static_cast<cublasLtHandle_t>(handle_), desc, &alpha, args.w, a,
                                  args.x, b, &beta, args.y, c, args.y, c, &result.algo, workspace_,
                                  workspace_bytes_, static_cast<cudaStream_t>(stream)),
                      "cublasLtMatmul");
  }();
  cleanup();
  return status;
}

}  // namespace kbitd::runtime::cuda
