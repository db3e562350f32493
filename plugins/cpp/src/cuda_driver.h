// The CUDA driver API, opened at first use (dlopen "libcuda.so.1"), so that the plugin library
// loads, and its host logic runs, on a machine without a GPU driver. Nothing links libcuda or the
// CUDA runtime: every symbol is looked up with dlsym.
#pragma once

#include <cuda.h>

#include <string>

namespace dysink
{

struct CudaDriver
{
    CUresult (*cuInit)(unsigned int);
    CUresult (*cuCtxGetDevice)(CUdevice*);
    CUresult (*cuCtxGetCurrent)(CUcontext*);
    CUresult (*cuCtxSetCurrent)(CUcontext);
    CUresult (*cuDeviceGet)(CUdevice*, int);
    CUresult (*cuDevicePrimaryCtxRetain)(CUcontext*, CUdevice);
    CUresult (*cuStreamGetCtx)(CUstream, CUcontext*);   // optional: nullptr when the driver lacks it
    CUresult (*cuDeviceGetAttribute)(int*, CUdevice_attribute, CUdevice);
    CUresult (*cuModuleLoadData)(CUmodule*, void const*);
    CUresult (*cuModuleGetFunction)(CUfunction*, CUmodule, char const*);
    CUresult (*cuFuncSetAttribute)(CUfunction, CUfunction_attribute, int);
    CUresult (*cuLaunchKernel)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
        CUstream, void**, void**);
    CUresult (*cuGetErrorString)(CUresult, char const**);
};

// The driver, or nullptr with `error` set to one line saying why (no libcuda.so.1, missing symbol).
CudaDriver const* cudaDriver(std::string& error);

// "cuLaunchKernel failed: CUDA_ERROR_... (code)" style text for a driver result.
std::string cudaErrorText(CudaDriver const& driver, CUresult result);

// Make sure this thread has a current CUDA context before a module load or a launch. When none is
// current: the context of `stream` (a stream other than the legacy / per-thread default streams),
// else the primary context of the CUDA runtime's current device on this thread (cudaGetDevice of a
// libcudart already loaded in the process), else of device 0; retained once per device and kept for
// the life of the process, then made current with cuCtxSetCurrent. CUDA_SUCCESS, or the failing
// call's result with `error` set to one line.
CUresult ensureCurrentContext(CudaDriver const& driver, CUstream stream, std::string& error);

// Compute capability x 10 of the current context's device (made current as above), or -1 with
// `error` set.
int currentDeviceArch(std::string& error);

} // namespace dysink
