#include "walk.h"

#include <cstdio>
#include <cstring>
#include <deque>

using namespace nvinfer1;

namespace harness
{
namespace
{
template <typename T>
T* capability(IPluginV3* plugin, PluginCapabilityType type)
{
    return plugin ? static_cast<T*>(plugin->getCapabilityInterface(type)) : nullptr;
}

std::string fieldsText(PluginFieldCollection const* fc)
{
    std::string text;
    for (int32_t i = 0; fc && i < fc->nbFields; ++i)
    {
        PluginField const& f = fc->fields[i];
        text += std::string(text.empty() ? "" : ", ") + (f.name ? f.name : "?") + "=";
        if (f.type == PluginFieldType::kFLOAT32 && f.length == 1)
        {
            char number[32];
            std::snprintf(number, sizeof number, "%.9g", *static_cast<float const*>(f.data));
            text += std::string(number) + " (float32)";
        }
        else if (f.type == PluginFieldType::kINT32 && f.length == 1)
        {
            text += std::to_string(*static_cast<int32_t const*>(f.data)) + " (int32)";
        }
        else if (f.type == PluginFieldType::kCHAR)
        {
            char const* chars = static_cast<char const*>(f.data);
            text += "'" + std::string(chars, strnlen(chars, static_cast<size_t>(f.length))) + "' (char)";
        }
        else
        {
            text += "<type " + std::to_string(static_cast<int>(f.type)) + " x" + std::to_string(f.length) + ">";
        }
    }
    return text;
}

std::string tensorText(Tensor const& t, char const* kind, size_t index)
{
    return std::string(kind) + " " + std::to_string(index) + " " + t.name + " (" + t.dtype->name + " "
        + shapeText(t.shape) + ")";
}
} // namespace

Walk::~Walk()
{
    for (IPluginV3* p : mOwned)
    {
        delete p;
    }
}

bool Walk::fail(std::string const& check, std::string const& why)
{
    std::string logged = mLogger.since(mMark);
    std::printf("FAIL %s: %s%s\n", check.c_str(), why.c_str(), logged.empty() ? "" : (": " + logged).c_str());
    std::fflush(stdout);
    return false;
}

void Walk::ok(std::string const& what)
{
    ++mChecks;
    std::printf("ok %s\n", what.c_str());
    mMark = mLogger.messages.size();
}

bool Walk::build(Library const& library)
{
    LoggerFinder* finder = new LoggerFinder(&mLogger);   // lives as long as the process, as TensorRT's
    library.setLoggerFinder(finder);
    int32_t n = 0;
    IPluginCreatorInterface* const* creators = library.getCreators(n);
    // The registry's lookup: name = the node's op_type, version and namespace from its attributes.
    Attribute const* ns = mCase.attribute("plugin_namespace");
    Attribute const* version = mCase.attribute("plugin_version");
    std::string wantNs = ns ? ns->text : "";
    std::string wantVersion = version ? version->text : "1";
    std::string seen;
    for (int32_t i = 0; creators && i < n; ++i)
    {
        InterfaceInfo info = creators[i]->getInterfaceInfo();
        if (std::strcmp(info.kind, "PLUGIN CREATOR_V3ONE") != 0 || info.major != 1)
        {
            continue;
        }
        auto* c = static_cast<IPluginCreatorV3One*>(creators[i]);
        seen += std::string(seen.empty() ? "" : ", ") + c->getPluginNamespace() + "::" + c->getPluginName() + " v"
            + c->getPluginVersion();
        if (mCase.op == c->getPluginName() && wantNs == c->getPluginNamespace() && wantVersion == c->getPluginVersion())
        {
            mCreator = c;
        }
    }
    if (!mCreator)
    {
        return fail("creator", "getCreators() has no IPluginCreatorV3One for " + wantNs + "::" + mCase.op + " version "
                + wantVersion + " (it has: " + (seen.empty() ? "none" : seen) + ")");
    }
    ok("creator " + wantNs + "::" + mCase.op + " version " + wantVersion + " from getCreators()");
    return createFromAttributes(mCreator) && buildCalls();
}

bool Walk::createFromAttributes(IPluginCreatorV3One* creator)
{
    // As the ONNX parser does: only the fields the creator names, each from the node attribute of
    // that name (FLOAT -> kFLOAT32, INT -> kINT32, STRING -> kCHAR with its NUL); absent ones skipped.
    PluginFieldCollection const* names = creator->getFieldNames();
    std::deque<std::vector<char>> storage;
    std::vector<PluginField> fields;
    std::string absent;
    for (int32_t i = 0; names && i < names->nbFields; ++i)
    {
        char const* name = names->fields[i].name;
        Attribute const* a = mCase.attribute(name);
        if (!a)
        {
            absent += std::string(absent.empty() ? "" : ", ") + name;
            continue;
        }
        storage.emplace_back();
        std::vector<char>& bytes = storage.back();
        PluginFieldType type = PluginFieldType::kCHAR;
        int32_t length = 1;
        if (a->type == "FLOAT")
        {
            float v = static_cast<float>(a->number);
            bytes.resize(sizeof v);
            std::memcpy(bytes.data(), &v, sizeof v);
            type = PluginFieldType::kFLOAT32;
        }
        else if (a->type == "INT")
        {
            int32_t v = static_cast<int32_t>(a->integer);   // the parser reads INT attributes as int32
            bytes.resize(sizeof v);
            std::memcpy(bytes.data(), &v, sizeof v);
            type = PluginFieldType::kINT32;
        }
        else
        {
            bytes.assign(a->text.begin(), a->text.end());
            bytes.push_back('\0');
            length = static_cast<int32_t>(bytes.size());
        }
        fields.emplace_back(name, bytes.data(), type, length);
    }
    std::string unused;   // node attributes the creator does not name: the parser passes none of them
    for (Attribute const& a : mCase.attributes)
    {
        bool named = false;
        for (int32_t i = 0; names && i < names->nbFields; ++i)
        {
            named = named || a.name == names->fields[i].name;
        }
        unused += named ? "" : (unused.empty() ? "" : ", ") + a.name;
    }
    PluginFieldCollection fc{static_cast<int32_t>(fields.size()), fields.data()};
    mPlugin = creator->createPlugin(mCase.node.c_str(), &fc, TensorRTPhase::kBUILD);
    if (!mPlugin)
    {
        return fail("createPlugin", mCase.op + " refused the node's attributes (" + fieldsText(&fc) + ")"
                + (absent.empty() ? "" : "; absent: " + absent));
    }
    mOwned.push_back(mPlugin);
    ok("createPlugin(kBUILD) from the fields the ONNX parser passes: " + fieldsText(&fc)
        + (absent.empty() ? "" : "; absent (the parser warns): " + absent)
        + (unused.empty() ? "" : "; not passed (not the creator's fields): " + unused));
    return true;
}

bool Walk::buildCalls()
{
    auto* core = capability<IPluginV3OneCore>(mPlugin, PluginCapabilityType::kCORE);
    auto* build = capability<IPluginV3OneBuild>(mPlugin, PluginCapabilityType::kBUILD);
    auto* runtime = capability<IPluginV3OneRuntime>(mPlugin, PluginCapabilityType::kRUNTIME);
    if (!core || !build || !runtime || mCase.op != core->getPluginName()
        || std::strcmp(core->getPluginNamespace(), mCreator->getPluginNamespace()) != 0
        || std::strcmp(core->getPluginVersion(), mCreator->getPluginVersion()) != 0)
    {
        return fail("getCapabilityInterface", "core, build and runtime capabilities with the creator's name, "
                                              "namespace and version");
    }
    ok("capabilities core / build / runtime");
    int32_t nIn = static_cast<int32_t>(mCase.inputs.size());
    int32_t nOut = static_cast<int32_t>(mCase.outputs.size());
    if (build->getNbOutputs() != nOut)
    {
        return fail("getNbOutputs", std::to_string(build->getNbOutputs()) + ", the contract has " + std::to_string(nOut));
    }
    std::vector<DataType> inTypes;
    for (Tensor const& t : mCase.inputs)
    {
        inTypes.push_back(t.dtype->trt);
    }
    std::vector<DataType> outTypes(nOut, DataType::kINT8);
    if (build->getOutputDataTypes(outTypes.data(), nOut, inTypes.data(), nIn) != 0)
    {
        return fail("getOutputDataTypes", "refused " + std::to_string(nIn) + " inputs of these dtypes");
    }
    for (int32_t i = 0; i < nOut; ++i)
    {
        if (outTypes[i] != mCase.outputs[i].dtype->trt)
        {
            return fail("getOutputDataTypes", mCase.outputs[i].name + " is " + dtypeName(outTypes[i])
                    + ", the contract says " + mCase.outputs[i].dtype->name);
        }
    }
    ok("getOutputDataTypes = the contract's");
    ExprBuilder exprs;
    std::vector<DimsExprs> inShapes;
    for (Tensor const& t : mCase.inputs)
    {
        inShapes.push_back(exprs.dims(t.shape));
    }
    std::vector<DimsExprs> outShapes(nOut);
    if (build->getOutputShapes(inShapes.data(), nIn, nullptr, 0, outShapes.data(), nOut, exprs) != 0)
    {
        return fail("getOutputShapes", "refused the input shapes");
    }
    for (int32_t i = 0; i < nOut; ++i)
    {
        std::vector<int64_t> got;
        bool constant = true;
        for (int32_t d = 0; d < outShapes[i].nbDims; ++d)
        {
            constant = constant && outShapes[i].d[d] && outShapes[i].d[d]->isConstant();
            got.push_back(constant ? outShapes[i].d[d]->getConstantValue() : -1);
        }
        if (!constant || got != mCase.outputs[i].shape)
        {
            return fail("getOutputShapes", mCase.outputs[i].name + " is " + (constant ? shapeText(got) : "not constant")
                    + ", the contract says " + shapeText(mCase.outputs[i].shape));
        }
    }
    ok("getOutputShapes (IExprBuilder constants) = the contract's");
    for (size_t i = 0; i < mCase.inputs.size() + mCase.outputs.size(); ++i)
    {
        Tensor const& t = i < mCase.inputs.size() ? mCase.inputs[i] : mCase.outputs[i - mCase.inputs.size()];
        DynamicPluginTensorDesc d{};
        d.desc.dims.nbDims = static_cast<int32_t>(t.shape.size());
        for (size_t k = 0; k < t.shape.size(); ++k)
        {
            d.desc.dims.d[k] = t.shape[k];
        }
        d.desc.type = t.dtype->trt;
        d.desc.format = TensorFormat::kLINEAR;
        d.desc.scale = 1.0F;
        d.min = d.opt = d.max = d.desc.dims;
        mDescs.push_back(d);
    }
    for (int32_t pos = 0; pos < nIn + nOut; ++pos)
    {
        if (!build->supportsFormatCombination(pos, mDescs.data(), nIn, nOut))
        {
            bool in = pos < nIn;
            Tensor const& t = in ? mCase.inputs[pos] : mCase.outputs[pos - nIn];
            return fail("supportsFormatCombination", mCase.op + " refuses position " + std::to_string(pos) + ": "
                    + tensorText(t, in ? "input" : "output", in ? pos : pos - nIn) + ", linear");
        }
    }
    ok("supportsFormatCombination: every position, linear, the contract's dtypes");
    if (build->configurePlugin(mDescs.data(), nIn, mDescs.data() + nIn, nOut) != 0)
    {
        return fail("configurePlugin", "refused the case's shapes");
    }
    ok("configurePlugin");
    mWorkspace = build->getWorkspaceSize(mDescs.data(), nIn, mDescs.data() + nIn, nOut);
    ok("getWorkspaceSize = " + std::to_string(mWorkspace) + " bytes");
    IPluginV3* copy = mPlugin->clone();
    if (copy)
    {
        mOwned.push_back(copy);
    }
    std::string fields = fieldsText(runtime->getFieldsToSerialize());
    auto* copyRuntime = capability<IPluginV3OneRuntime>(copy, PluginCapabilityType::kRUNTIME);
    if (!copyRuntime || fieldsText(copyRuntime->getFieldsToSerialize()) != fields)
    {
        return fail("clone", "no copy, or one that serializes other fields than " + fields);
    }
    ok("clone keeps the fields: " + fields);
    return true;
}

bool Walk::runtime(Device* device, std::string const& outDir)
{
    // Deserialization: the engine holds getFieldsToSerialize(); TensorRT gives them back to the creator.
    auto* built = capability<IPluginV3OneRuntime>(mPlugin, PluginCapabilityType::kRUNTIME);
    PluginFieldCollection const* serialized = built->getFieldsToSerialize();
    std::string fields = fieldsText(serialized);
    IPluginV3* restored = mCreator->createPlugin(mCase.node.c_str(), serialized, TensorRTPhase::kRUNTIME);
    if (restored)
    {
        mOwned.push_back(restored);
    }
    auto* restoredRuntime = capability<IPluginV3OneRuntime>(restored, PluginCapabilityType::kRUNTIME);
    if (!restoredRuntime || fieldsText(restoredRuntime->getFieldsToSerialize()) != fields)
    {
        return fail("createPlugin(kRUNTIME)", "the serialized fields (" + fields + ") do not make the same plugin");
    }
    ok("createPlugin(kRUNTIME) from the serialized fields");
    ResourceContext context;
    IPluginV3* attached = restoredRuntime->attachToContext(&context);
    if (attached)
    {
        mOwned.push_back(attached);
    }
    auto* rt = capability<IPluginV3OneRuntime>(attached, PluginCapabilityType::kRUNTIME);
    if (!rt || rt->setTactic(0) != 0)
    {
        return fail("attachToContext", "no plugin for the execution context (or setTactic(0) refused)");
    }
    ok("attachToContext, setTactic(0)");
    int32_t nIn = static_cast<int32_t>(mCase.inputs.size());
    int32_t nOut = static_cast<int32_t>(mCase.outputs.size());
    std::vector<PluginTensorDesc> descs;
    for (DynamicPluginTensorDesc const& d : mDescs)
    {
        descs.push_back(d.desc);
    }
    int32_t rc = rt->onShapeChange(descs.data(), nIn, descs.data() + nIn, nOut);
    if (!device)
    {
        std::string said = mLogger.since(mMark);
        if (rc != 0 && said.empty())
        {
            return fail("onShapeChange", "refused without saying why");
        }
        ok(rc == 0 ? "onShapeChange" : "onShapeChange without a GPU refuses with one message: " + said);
        return true;
    }
    if (rc != 0)
    {
        return fail("onShapeChange", "refused on " + device->description());
    }
    ok("onShapeChange: kernels loaded on " + device->description());
    return enqueue(rt, *device, outDir);
}

} // namespace harness
