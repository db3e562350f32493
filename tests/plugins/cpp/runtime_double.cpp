// TEST DOUBLE, not the CUDA runtime: a stand-in libcudart.so.13 exporting cudaGetDevice (the only
// runtime entry point libdysink_plugins.so looks up, in a runtime the process already loaded), with
// the device settable by the test (context_harness.cpp).
#define EXPORT extern "C" __attribute__((visibility("default")))

namespace
{
int gDevice = 0;
}

EXPORT int cudaGetDevice(int* device)
{
    *device = gDevice;
    return 0;
}

EXPORT void runtimeDoubleSetDevice(int device)
{
    gDevice = device;
}
