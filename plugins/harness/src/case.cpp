#include "case.h"

#include "json.h"

#include <fstream>
#include <sstream>

using nvinfer1::DataType;

namespace harness
{
namespace
{
DtypeInfo const kDtypes[] = {
    {"float32", "<f4", DataType::kFLOAT},
    {"float16", "<f2", DataType::kHALF},
    {"bfloat16", "<u2", DataType::kBF16},   // raw bits: NumPy has no bfloat16
    {"int64", "<i8", DataType::kINT64},
    {"int32", "<i4", DataType::kINT32},
    {"bool", "|b1", DataType::kBOOL},
};

bool readText(std::string const& path, std::string& text)
{
    std::ifstream file(path);
    if (!file)
    {
        return false;
    }
    std::stringstream buffer;
    buffer << file.rdbuf();
    text = buffer.str();
    return true;
}

std::string stringMember(Json const& object, char const* name)
{
    Json const* v = object.get(name);
    return v && v->kind == Json::Kind::kString ? v->text : "";
}

bool readTensor(Json const& entry, bool input, std::string const& dir, Tensor& t, std::string& error)
{
    t.name = stringMember(entry, "name");
    std::string what = std::string(input ? "input " : "output ") + (t.name.empty() ? "?" : t.name);
    std::string dtype = stringMember(entry, "dtype");
    t.dtype = dtypeNamed(dtype);
    if (t.name.empty() || !t.dtype)
    {
        error = what + ": needs a name and a dtype (float32, float16, bfloat16, int64, int32, bool), got '" + dtype
            + "'";
        return false;
    }
    if (!input)
    {
        Json const* shape = entry.get("shape");
        if (!shape || shape->kind != Json::Kind::kArray)
        {
            error = what + ": needs a shape (a list of integers)";
            return false;
        }
        for (Json const& d : shape->items)
        {
            if (d.kind != Json::Kind::kNumber || !d.isInteger || d.integer < 0)
            {
                error = what + ": shape entries must be integers >= 0";
                return false;
            }
            t.shape.push_back(d.integer);
        }
        return true;
    }
    std::string file = stringMember(entry, "file");
    if (file.empty())
    {
        error = what + ": needs a file (.npy, relative to the case folder)";
        return false;
    }
    if (!readNpy(dir + "/" + file, t.array, error))
    {
        error = what + ": " + error;
        return false;
    }
    if (t.array.descr != t.dtype->descr)
    {
        error = what + ": " + file + " holds '" + t.array.descr + "' but the case says " + t.dtype->name + " ('"
            + t.dtype->descr + "' in .npy)";
        return false;
    }
    t.shape = t.array.shape;
    return true;
}
} // namespace

DtypeInfo const* dtypeNamed(std::string const& name)
{
    for (DtypeInfo const& d : kDtypes)
    {
        if (name == d.name)
        {
            return &d;
        }
    }
    return nullptr;
}

std::string dtypeName(DataType type)
{
    for (DtypeInfo const& d : kDtypes)
    {
        if (d.trt == type)
        {
            return d.name;
        }
    }
    switch (type)
    {
    case DataType::kINT8: return "INT8";
    case DataType::kUINT8: return "UINT8";
    case DataType::kFP8: return "FP8";
    case DataType::kINT4: return "INT4";
    default: return "DataType " + std::to_string(static_cast<int>(type));
    }
}

size_t dtypeSize(DataType type)
{
    switch (type)
    {
    case DataType::kFLOAT: case DataType::kINT32: return 4;
    case DataType::kHALF: case DataType::kBF16: return 2;
    case DataType::kINT64: return 8;
    default: return 1;
    }
}

Attribute const* Case::attribute(char const* name) const
{
    for (Attribute const& a : attributes)
    {
        if (a.name == name)
        {
            return &a;
        }
    }
    return nullptr;
}

bool loadCase(std::string const& dir, Case& out, std::string& error)
{
    std::string text;
    std::string path = dir + "/case.json";
    Json root;
    if (!readText(path, text))
    {
        error = path + ": cannot be read";
        return false;
    }
    if (!parseJson(text, root, error) || root.kind != Json::Kind::kObject)
    {
        error = path + ": " + (error.empty() ? "not a JSON object" : error);
        return false;
    }
    Json const* format = root.get("format");
    if (!format || !format->isInteger || format->integer != 1)
    {
        error = path + ": format must be 1 (written by this version's dysink_deploy.plugins.harness)";
        return false;
    }
    out.op = stringMember(root, "op");
    out.node = stringMember(root, "node");
    Json const* attrs = root.get("attributes");
    Json const* inputs = root.get("inputs");
    Json const* outputs = root.get("outputs");
    if (out.op.empty() || !attrs || attrs->kind != Json::Kind::kObject || !inputs
        || inputs->kind != Json::Kind::kArray || !outputs || outputs->kind != Json::Kind::kArray)
    {
        error = path + ": needs op, attributes (an object), inputs and outputs (lists)";
        return false;
    }
    for (auto const& m : attrs->members)
    {
        Attribute a;
        a.name = m.first;
        a.type = stringMember(m.second, "type");
        Json const* v = m.second.get("value");
        bool ok = v
            && ((a.type == "FLOAT" && v->kind == Json::Kind::kNumber)
                || (a.type == "INT" && v->kind == Json::Kind::kNumber && v->isInteger)
                || (a.type == "STRING" && v->kind == Json::Kind::kString));
        if (!ok)
        {
            error = path + ": attribute " + a.name + " needs a type (FLOAT, INT, STRING) and a value of that type";
            return false;
        }
        a.number = v->number;
        a.integer = v->integer;
        a.text = v->text;
        out.attributes.push_back(a);
    }
    for (size_t i = 0; i < inputs->items.size() + outputs->items.size(); ++i)
    {
        bool input = i < inputs->items.size();
        Json const& entry = input ? inputs->items[i] : outputs->items[i - inputs->items.size()];
        Tensor t;
        if (entry.kind != Json::Kind::kObject || !readTensor(entry, input, dir, t, error))
        {
            error = path + ": " + (error.empty() ? "inputs and outputs must be objects" : error);
            return false;
        }
        (input ? out.inputs : out.outputs).push_back(std::move(t));
    }
    return true;
}

} // namespace harness
