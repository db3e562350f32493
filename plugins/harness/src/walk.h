// The IPluginV3 calls TensorRT makes, in its order, on one case: the ONNX parser's createPlugin, the
// build calls, then deserialization, attachToContext, onShapeChange and enqueue. Each check prints
// "ok <what>"; the first that fails prints "FAIL <check>: <why>" (with the plugin's logged lines).
#pragma once

#include "case.h"
#include "device.h"
#include "doubles.h"

#include "NvInferRuntime.h"

#include <memory>
#include <string>
#include <vector>

namespace harness
{

struct Library
{
    nvinfer1::IPluginCreatorInterface* const* (*getCreators)(int32_t&) = nullptr;
    void (*setLoggerFinder)(nvinfer1::ILoggerFinder*) = nullptr;
};

class Walk
{
public:
    Walk(Case const& c, CapturingLogger& logger)
        : mCase(c)
        , mLogger(logger)
    {
    }
    ~Walk();

    // Creator lookup, createPlugin from the node's attributes, the build calls.
    bool build(Library const& library);
    // Deserialization, attachToContext, onShapeChange; then, with a device, enqueue (twice: outputs
    // must be bit-identical) and the outputs written to outDir as <name>.npy. Without a device,
    // onShapeChange may refuse (it needs the GPU to load the kernels) and nothing is enqueued.
    bool runtime(Device* device, std::string const& outDir);
    int checks() const
    {
        return mChecks;
    }

private:
    bool fail(std::string const& check, std::string const& why);
    void ok(std::string const& what);
    bool createFromAttributes(nvinfer1::IPluginCreatorV3One* creator);
    bool buildCalls();
    bool enqueue(nvinfer1::IPluginV3OneRuntime* runtime, Device& device, std::string const& outDir);

    Case const& mCase;
    CapturingLogger& mLogger;
    int mChecks = 0;
    size_t mMark = 0;   // logger messages before the current call
    nvinfer1::IPluginCreatorV3One* mCreator = nullptr;
    nvinfer1::IPluginV3* mPlugin = nullptr;                  // as the parser creates it (build phase)
    std::vector<nvinfer1::IPluginV3*> mOwned;                 // every plugin made, deleted at the end
    std::vector<nvinfer1::DynamicPluginTensorDesc> mDescs;   // inputs, then outputs
    size_t mWorkspace = 0;
};

} // namespace harness
