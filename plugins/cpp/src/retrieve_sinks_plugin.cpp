// RetrieveSinks: two kernel launches (retrieve_scores, retrieve_topk), contract of
// dysink_deploy/ops/retrieve_sinks.py. Inputs: bank_feats float32 [C, F], bank_start int64 [C],
// queries float32 [Q, F], query_valid int32 [Q] (1 valid, 0 not: TensorRT plugin I/O cannot be BOOL),
// current_start int64 [], window_frames int64 [].
// Outputs: slots int64 [k], scores float32 [k].
#include "plugins.h"

using namespace nvinfer1;

namespace dysink
{

RetrieveSinksPlugin::RetrieveSinksPlugin(int32_t sinkSize, int32_t k)
    : mSinkSize(sinkSize)
    , mK(k)
{
}

IPluginV3* RetrieveSinksPlugin::clone() noexcept
{
    return copyOf(*this);
}

int32_t RetrieveSinksPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const*, int32_t nbInputs) const noexcept
{
    if (nbInputs != kInputs || nbOutputs != 2)
    {
        return -1;
    }
    outputTypes[0] = DataType::kINT64;
    outputTypes[1] = DataType::kFLOAT;
    return 0;
}

int32_t RetrieveSinksPlugin::getOutputShapes(DimsExprs const*, int32_t nbInputs, DimsExprs const*, int32_t,
    DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& exprBuilder) noexcept
{
    if (nbInputs != kInputs || nbOutputs != 2)
    {
        return -1;
    }
    for (int32_t i = 0; i < 2; ++i)
    {
        outputs[i].nbDims = 1;
        outputs[i].d[0] = exprBuilder.constant(mK);
    }
    return 0;
}

bool RetrieveSinksPlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (nbInputs != kInputs || nbOutputs != 2 || pos < 0 || pos >= kInputs + 2)
    {
        return false;
    }
    PluginTensorDesc const& d = inOut[pos].desc;
    if (d.format != TensorFormat::kLINEAR)
    {
        return false;
    }
    switch (pos)
    {
    case 0: case 2: case 7: return d.type == DataType::kFLOAT;   // bank_feats, queries, scores
    case 3: return d.type == DataType::kINT32;                     // query_valid (BOOL is not plugin I/O)
    default: return d.type == DataType::kINT64;                    // bank_start, current_start, window_frames, slots
    }
}

std::string RetrieveSinksPlugin::checkShapes(DynamicPluginTensorDesc const* in, int32_t nbInputs) const
{
    if (nbInputs != kInputs)
    {
        return "expects 6 inputs (bank_feats, bank_start, queries, query_valid, current_start, window_frames), got "
            + std::to_string(nbInputs);
    }
    Dims const& feats = in[0].desc.dims;
    Dims const& queries = in[2].desc.dims;
    if (feats.nbDims != 2 || queries.nbDims != 2 || feats.d[1] != queries.d[1])
    {
        return "bank_feats must be [C, F] and queries [Q, F]";
    }
    if (in[1].desc.dims.nbDims != 1 || in[1].desc.dims.d[0] != feats.d[0])
    {
        return "bank_start must be [C]";
    }
    if (in[3].desc.dims.nbDims != 1 || in[3].desc.dims.d[0] != queries.d[0])
    {
        return "query_valid must be [Q]";
    }
    if (in[4].desc.dims.nbDims != 0 || in[5].desc.dims.nbDims != 0)
    {
        return "current_start and window_frames must be scalars";
    }
    if (feats.d[0] > kMaxCapacity)
    {
        return "bank capacity " + std::to_string(feats.d[0]) + " exceeds the kernel's " + std::to_string(kMaxCapacity);
    }
    return "";
}

size_t RetrieveSinksPlugin::getWorkspaceSize(
    DynamicPluginTensorDesc const* inputs, int32_t nbInputs, DynamicPluginTensorDesc const*, int32_t) const noexcept
{
    return nbInputs == kInputs ? static_cast<size_t>(4 * (inputs[0].max.d[0] > 0 ? inputs[0].max.d[0] : 1)) : 0;
}

int32_t RetrieveSinksPlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const*, int32_t) noexcept
{
    if (nbInputs != kInputs)
    {
        return -1;
    }
    mCapacity = static_cast<int32_t>(in[0].dims.d[0]);
    mFeat = static_cast<int32_t>(in[0].dims.d[1]);
    mQueries = static_cast<int32_t>(in[2].dims.d[0]);
    std::string error;
    int32_t arch = currentDeviceArch(error);
    if (arch < 0)
    {
        logError("RetrieveSinks: " + error);
        return -1;
    }
    KernelImage const* scores = findKernelImage({"retrieve_scores", kAnyDtype, 0, 0, -1}, arch, error);
    KernelImage const* topk = scores ? findKernelImage({"retrieve_topk", kAnyDtype, 0, 0, -1}, arch, error) : nullptr;
    if (!topk || !loadKernel(scores, mScores, error) || !loadKernel(topk, mTopk, error))
    {
        logError("RetrieveSinks: " + error);
        return -1;
    }
    return 0;
}

int32_t RetrieveSinksPlugin::enqueue(PluginTensorDesc const*, PluginTensorDesc const*, void const* const* inputs,
    void* const* outputs, void* workspace, cudaStream_t stream) noexcept
{
    if (!mTopk.function)
    {
        logError("RetrieveSinks: enqueue before onShapeChange loaded the kernels");
        return -1;
    }
    CUdeviceptr ptr[6];
    for (int32_t i = 0; i < 6; ++i)
    {
        ptr[i] = reinterpret_cast<CUdeviceptr>(inputs[i]);
    }
    CUdeviceptr scoresWs = reinterpret_cast<CUdeviceptr>(workspace);
    CUdeviceptr slots = reinterpret_cast<CUdeviceptr>(outputs[0]);
    CUdeviceptr top = reinterpret_cast<CUdeviceptr>(outputs[1]);
    CUstream cuStream = reinterpret_cast<CUstream>(stream);
    CUresult result = CUDA_SUCCESS;
    if (mCapacity > 0)
    {
        ArgList a;
        for (int32_t i = 0; i < 6; ++i)
        {
            a.add(&ptr[i]);
        }
        a.add(&scoresWs).add(&mCapacity).add(&mFeat).add(&mQueries).add(&mSinkSize);
        int32_t blockC = mScores.image->blockC;
        result = launchKernel(mScores, (mCapacity + blockC - 1) / blockC, 1, 1, a, cuStream);
    }
    if (result == CUDA_SUCCESS)
    {
        ArgList b;
        b.add(&scoresWs).add(&slots).add(&top).add(&mCapacity).add(&mK);
        result = launchKernel(mTopk, 1, 1, 1, b, cuStream);
    }
    return launchStatus(result);
}

PluginFieldCollection const* RetrieveSinksPlugin::getFieldsToSerialize() noexcept
{
    return serialize({PluginField("sink_size", &mSinkSize, PluginFieldType::kINT32, 1),
        PluginField("k", &mK, PluginFieldType::kINT32, 1)});
}

RetrieveSinksCreator::RetrieveSinksCreator()
{
    setFieldNames({PluginField("sink_size", nullptr, PluginFieldType::kINT32, 1),
        PluginField("k", nullptr, PluginFieldType::kINT32, 1)});
}

IPluginV3* RetrieveSinksCreator::createPlugin(
    char const* name, PluginFieldCollection const* fc, TensorRTPhase /*phase*/) noexcept
{
    try
    {
        FieldReader fields(fc);
        std::string where = std::string("RetrieveSinks '") + (name ? name : "") + "': ";
        std::string bad;
        if (!checkVersionField(fields, "RetrieveSinks", bad))
        {
            logError(where + bad);
            return nullptr;
        }
        int64_t sinkSize = 0;
        int64_t k = 0;
        bool has = fields.getInt("sink_size", sinkSize, bad) & fields.getInt("k", k, bad);
        if (!bad.empty() || !has)
        {
            logError(where + (bad.empty() ? "needs the attributes sink_size and k" : bad));
            return nullptr;
        }
        for (std::string const& unknown : fields.unknown({"sink_size", "k"}))
        {
            logMessage(ILogger::Severity::kWARNING, where + "ignoring unknown attribute " + unknown);
        }
        if (k < 1 || k > RetrieveSinksPlugin::kMaxK)
        {
            logError(where + "k must lie in 1.." + std::to_string(RetrieveSinksPlugin::kMaxK) + ", got "
                + std::to_string(k));
            return nullptr;
        }
        if (sinkSize < 0 || sinkSize > (int64_t{1} << 30))
        {
            logError(where + "sink_size must be >= 0, got " + std::to_string(sinkSize));
            return nullptr;
        }
        return new RetrieveSinksPlugin(static_cast<int32_t>(sinkSize), static_cast<int32_t>(k));
    }
    catch (...)
    {
        return nullptr;
    }
}

} // namespace dysink
