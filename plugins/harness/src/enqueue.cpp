// Walk::enqueue: the plugin launched on a CUDA stream over device buffers filled from the case's
// .npy inputs, twice (bit-identical outputs), then the outputs written as .npy.
#include "walk.h"

using namespace nvinfer1;

namespace harness
{

bool Walk::enqueue(IPluginV3OneRuntime* rt, Device& device, std::string const& outDir)
{
    int32_t nIn = static_cast<int32_t>(mCase.inputs.size());
    int32_t nOut = static_cast<int32_t>(mCase.outputs.size());
    std::string error;
    std::vector<CUdeviceptr> in(nIn), out(nOut);
    std::vector<size_t> outBytes(nOut);
    CUdeviceptr workspace = 0;
    for (int32_t i = 0; i < nIn; ++i)
    {
        NpyArray const& a = mCase.inputs[i].array;
        if (!device.alloc(a.data.size(), in[i], error) || !device.upload(in[i], a.data.data(), a.data.size(), error))
        {
            return fail("input buffers", mCase.inputs[i].name + ": " + error);
        }
    }
    for (int32_t i = 0; i < nOut; ++i)
    {
        NpyArray shape;
        shape.shape = mCase.outputs[i].shape;
        outBytes[i] = static_cast<size_t>(shape.count()) * dtypeSize(mCase.outputs[i].dtype->trt);
        if (!device.alloc(outBytes[i], out[i], error))
        {
            return fail("output buffers", mCase.outputs[i].name + ": " + error);
        }
    }
    if (mWorkspace && !device.alloc(mWorkspace, workspace, error))
    {
        return fail("workspace", error);
    }
    std::vector<PluginTensorDesc> descs;
    for (DynamicPluginTensorDesc const& d : mDescs)
    {
        descs.push_back(d.desc);
    }
    std::vector<void const*> inPtrs;
    std::vector<void*> outPtrs;
    for (CUdeviceptr p : in)
    {
        inPtrs.push_back(reinterpret_cast<void const*>(p));
    }
    for (CUdeviceptr p : out)
    {
        outPtrs.push_back(reinterpret_cast<void*>(p));
    }
    std::vector<std::vector<uint8_t>> first(nOut);
    for (int run = 0; run < 2; ++run)
    {
        // Outputs and workspace start as garbage (0xA5 bytes): an output the kernels leave unwritten shows.
        for (int32_t i = 0; i < nOut; ++i)
        {
            if (!device.fill(out[i], 0xA5, outBytes[i], error))
            {
                return fail("output buffers", error);
            }
        }
        if (mWorkspace && !device.fill(workspace, 0xA5, mWorkspace, error))
        {
            return fail("workspace", error);
        }
        auto stream = reinterpret_cast<cudaStream_t>(device.stream());
        if (rt->enqueue(descs.data(), descs.data() + nIn, inPtrs.data(), outPtrs.data(),
                reinterpret_cast<void*>(workspace), stream) != 0)
        {
            return fail("enqueue", "returned an error on " + device.description());
        }
        if (!device.synchronize(error))
        {
            return fail("enqueue", error);
        }
        for (int32_t i = 0; i < nOut; ++i)
        {
            std::vector<uint8_t> bytes(outBytes[i]);
            if (!device.download(bytes.data(), out[i], outBytes[i], error))
            {
                return fail("outputs", error);
            }
            if (run == 0)
            {
                first[i] = std::move(bytes);
            }
            else if (bytes != first[i])
            {
                return fail("enqueue twice", mCase.outputs[i].name + " differs between two runs on the same inputs");
            }
        }
        ok(run == 0 ? "enqueue on " + device.description() : "enqueue again: bit-identical outputs");
    }
    for (int32_t i = 0; i < nOut; ++i)
    {
        NpyArray a;
        a.descr = mCase.outputs[i].dtype->descr;
        a.shape = mCase.outputs[i].shape;
        a.data = first[i];
        if (!writeNpy(outDir + "/" + mCase.outputs[i].name + ".npy", a, error))
        {
            return fail("outputs", error);
        }
    }
    ok("outputs written to " + outDir);
    return true;
}

} // namespace harness
