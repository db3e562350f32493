// The IPluginV3 plugins and their creators (namespace "dysink", version "1"): GatedSinkAttention,
// GatedSinkAttentionQ8 (one class) and RetrieveSinks.
#pragma once

#include "plugin_common.h"

#include <string>

namespace dysink
{

// Core / build / runtime plumbing shared by the plugins.
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

// dysink::GatedSinkAttention and dysink::GatedSinkAttentionQ8: one contract, one class. The Q8 op
// takes two more inputs (k_scale, v_scale float32 [P, L, H]) and pools in another storage than q
// (int8 / fp8, or bf16 under an fp16 / fp32 q), whose kernels (page variants) take the scales.
enum class AttentionOp : int32_t
{
    kPlain,   // GatedSinkAttention: pools in q's dtype (kernels of pages "auto")
    kQ8,      // GatedSinkAttentionQ8
};

class GatedSinkAttentionPlugin final : public PluginBase
{
public:
    GatedSinkAttentionPlugin(AttentionOp op, float threshold, int32_t sinkKvBf16, int32_t fixedSinks);
    GatedSinkAttentionPlugin(GatedSinkAttentionPlugin const& other) = default;   // loaded kernels are shared
    nvinfer1::IPluginV3* clone() noexcept override;
    char const* getPluginName() const noexcept override { return opName(mOp); }
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

    static constexpr int32_t kInputs = 7;     // GatedSinkAttention
    static constexpr int32_t kInputsQ8 = 9;   // GatedSinkAttentionQ8: + k_scale, v_scale
    static char const* opName(AttentionOp op)
    {
        return op == AttentionOp::kQ8 ? "GatedSinkAttentionQ8" : "GatedSinkAttention";
    }
    // The kernels' page type (KPages) for pools of type `pool` under q of type `q`, or -1 when the op
    // does not take them: kPlain only q's own type (auto); kQ8 int8, fp8, and bf16 under fp16 / fp32.
    static int32_t pagesOf(AttentionOp op, nvinfer1::DataType q, nvinfer1::DataType pool);
    static size_t workspaceBytes(int64_t nSink, int64_t nLocal, int64_t heads, int64_t headDim);

protected:
    std::string checkShapes(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs) const override;

private:
    int32_t inputCount() const { return mOp == AttentionOp::kQ8 ? kInputsQ8 : kInputs; }

    AttentionOp mOp;
    float mThreshold;
    int32_t mSinkKvBf16;
    int32_t mFixedSinks;
    // Set by onShapeChange (runtime): shapes and the kernels for this device.
    // mPages: the pools' first dimension P (the kernels treat a page id outside [0, P) as empty).
    int32_t mTokens = 0, mHeads = 0, mHeadDim = 0, mLocal = 0, mSink = 0, mPages = 0;
    int32_t mPageType = kPagesAuto;   // KPages of the loaded kernels: int8 / fp8 launch with the scales
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
    explicit GatedSinkAttentionCreator(AttentionOp op);
    char const* getPluginName() const noexcept override { return GatedSinkAttentionPlugin::opName(mOp); }
    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;

private:
    AttentionOp mOp;
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
