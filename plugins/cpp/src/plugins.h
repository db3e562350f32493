// The two IPluginV3 plugins and their creators (namespace "dysink", version "1").
#pragma once

#include "plugin_common.h"

#include <string>

namespace dysink
{

// Core / build / runtime plumbing shared by both plugins.
class PluginBase : public nvinfer1::IPluginV3,
                   public nvinfer1::IPluginV3OneCore,
                   public nvinfer1::IPluginV3OneBuild,
                   public nvinfer1::IPluginV3OneRuntime
{
public:
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    char const* getPluginVersion() const noexcept override { return kPluginVersion; }
    char const* getPluginNamespace() const noexcept override { return kPluginNamespace; }
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext*) noexcept override { return clone(); }
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;

protected:
    // Shape checks on the build-time descriptors; "" when fine.
    virtual std::string checkShapes(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs) const = 0;
    // `fields` + plugin_version, kept in the plugin object (TensorRT copies them out).
    nvinfer1::PluginFieldCollection const* serialize(std::vector<nvinfer1::PluginField> fields);
    // enqueue's return value: 0, or -1 with the driver's error logged.
    int32_t launchStatus(CUresult result) const;
    // clone(): a copy of the derived plugin (serialized fields are rebuilt on request).
    template <typename Plugin>
    static nvinfer1::IPluginV3* copyOf(Plugin const& plugin) noexcept
    {
        try
        {
            return new Plugin(plugin);
        }
        catch (...)
        {
            return nullptr;
        }
    }
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

class GatedSinkAttentionPlugin final : public PluginBase
{
public:
    GatedSinkAttentionPlugin(float threshold, int32_t sinkKvBf16, int32_t fixedSinks);
    GatedSinkAttentionPlugin(GatedSinkAttentionPlugin const& other) = default;   // loaded kernels are shared
    nvinfer1::IPluginV3* clone() noexcept override;
    char const* getPluginName() const noexcept override { return "GatedSinkAttention"; }
    int32_t getNbOutputs() const noexcept override { return 2; }
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs, nvinfer1::DataType const* inputTypes,
        int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
        int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
        nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
        int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

    static constexpr int32_t kInputs = 7;
    static size_t workspaceBytes(int64_t nSink, int64_t nLocal, int64_t heads, int64_t headDim);

protected:
    std::string checkShapes(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs) const override;

private:
    float mThreshold;
    int32_t mSinkKvBf16;
    int32_t mFixedSinks;
    // Set by onShapeChange (runtime): shapes and the kernels for this device.
    // mPages: the pools' first dimension P (the kernels treat a page id outside [0, P) as empty).
    int32_t mTokens = 0, mHeads = 0, mHeadDim = 0, mLocal = 0, mSink = 0, mPages = 0;
    LoadedKernel mPartial, mDecide, mAttention;
};

class RetrieveSinksPlugin final : public PluginBase
{
public:
    RetrieveSinksPlugin(int32_t sinkSize, int32_t k);
    RetrieveSinksPlugin(RetrieveSinksPlugin const& other) = default;
    nvinfer1::IPluginV3* clone() noexcept override;
    char const* getPluginName() const noexcept override { return "RetrieveSinks"; }
    int32_t getNbOutputs() const noexcept override { return 2; }
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs, nvinfer1::DataType const* inputTypes,
        int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
        int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
        nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
        int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

    static constexpr int32_t kInputs = 6;
    static constexpr int32_t kMaxCapacity = 1024;
    static constexpr int32_t kMaxK = 8;

protected:
    std::string checkShapes(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs) const override;

private:
    int32_t mSinkSize;
    int32_t mK;
    int32_t mCapacity = 0, mFeat = 0, mQueries = 0;
    LoadedKernel mScores, mTopk;
};

// Creators: validate attributes (one logged line per problem, nullptr back), build plugins.
class CreatorBase : public nvinfer1::IPluginCreatorV3One
{
public:
    char const* getPluginVersion() const noexcept override { return kPluginVersion; }
    char const* getPluginNamespace() const noexcept override { return kPluginNamespace; }
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override { return &mFieldNames; }

protected:
    void setFieldNames(std::vector<nvinfer1::PluginField> names);
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mFieldNames{};
};

class GatedSinkAttentionCreator final : public CreatorBase
{
public:
    GatedSinkAttentionCreator();
    char const* getPluginName() const noexcept override { return "GatedSinkAttention"; }
    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;
};

class RetrieveSinksCreator final : public CreatorBase
{
public:
    RetrieveSinksCreator();
    char const* getPluginName() const noexcept override { return "RetrieveSinks"; }
    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;
};

// Gate workspace: programs per (slot, head) of gate_partial_sums on every GPU target
// (plugins/variants.py GATE_SPLITS; the generated kernel table is checked against it).
constexpr int32_t kGateSplits = 8;

} // namespace dysink
