#include "plugins.h"

namespace dysink
{

nvinfer1::IPluginCapability* PluginBase::getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
    case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
    case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
    }
    return nullptr;
}

int32_t PluginBase::configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
    nvinfer1::DynamicPluginTensorDesc const* /*out*/, int32_t /*nbOutputs*/) noexcept
{
    std::string problem = checkShapes(in, nbInputs);
    if (!problem.empty())
    {
        logError(std::string(getPluginName()) + ": " + problem);
        return -1;
    }
    return 0;
}

nvinfer1::PluginFieldCollection const* PluginBase::serialize(std::vector<nvinfer1::PluginField> fields)
{
    mFields = std::move(fields);
    mFields.emplace_back("plugin_version", kPluginVersion, nvinfer1::PluginFieldType::kCHAR, 2);
    mFieldCollection.nbFields = static_cast<int32_t>(mFields.size());
    mFieldCollection.fields = mFields.data();
    return &mFieldCollection;
}

int32_t PluginBase::launchStatus(CUresult result) const
{
    if (result == CUDA_SUCCESS)
    {
        return 0;
    }
    std::string error;
    CudaDriver const* driver = cudaDriver(error);
    std::string hint = result == CUDA_ERROR_INVALID_VALUE
        ? " (also returned when the plugin's argument list does not match the embedded cubin's: rebuild the "
          "library with this version's dysink-export plugins)"
        : "";
    logError(std::string(getPluginName()) + ": kernel launch failed: "
        + (driver ? cudaErrorText(*driver, result) : error) + hint);
    return -1;
}

void CreatorBase::setFieldNames(std::vector<nvinfer1::PluginField> names)
{
    mFields = std::move(names);
    mFieldNames.nbFields = static_cast<int32_t>(mFields.size());
    mFieldNames.fields = mFields.data();
}

} // namespace dysink
