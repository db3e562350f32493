// The CUDA driver API, opened at first use (dlopen "libcuda.so.1"), so that the plugin library
// loads, and its host logic runs, on a machine without a GPU driver. Nothing links libcuda.
#pragma once

#include <cuda.h>

#include <string>

namespace dysink
{

struct CudaDriver
{
    CUresult (*cuInit)(unsigned int);
    CUresult (*cuCtxGetDevice)(CUdevice*);
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

// Compute capability x 10 of the current context's device, or -1 with `error` set.
int currentDeviceArch(std::string& error);

} // namespace dysink
