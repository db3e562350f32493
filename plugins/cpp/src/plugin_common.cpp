#include "plugin_common.h"

#include <cstring>
#include <iostream>
#include <mutex>

namespace dysink
{
namespace
{
std::mutex gLogMutex;
nvinfer1::ILoggerFinder* gFinder = nullptr;
} // namespace

void setLoggerFinderImpl(nvinfer1::ILoggerFinder* finder)
{
    std::lock_guard<std::mutex> lock(gLogMutex);
    gFinder = finder;
}

void logMessage(nvinfer1::ILogger::Severity severity, std::string const& message)
{
    nvinfer1::ILogger* logger = nullptr;
    {
        std::lock_guard<std::mutex> lock(gLogMutex);
        logger = gFinder ? gFinder->findLogger() : nullptr;
    }
    std::string text = "[dysink plugins] " + message;
    if (logger)
    {
        logger->log(severity, text.c_str());
    }
    else if (severity <= nvinfer1::ILogger::Severity::kWARNING)
    {
        std::cerr << text << std::endl;
    }
}

nvinfer1::PluginField const* FieldReader::find(char const* name) const
{
    if (!mFc)
    {
        return nullptr;
    }
    for (int32_t i = 0; i < mFc->nbFields; ++i)
    {
        if (mFc->fields[i].name && std::strcmp(mFc->fields[i].name, name) == 0)
        {
            return &mFc->fields[i];
        }
    }
    return nullptr;
}

bool FieldReader::getFloat(char const* name, double& out, std::string& bad) const
{
    nvinfer1::PluginField const* f = find(name);
    if (!f)
    {
        return false;
    }
    if (f->length < 1 || !f->data)
    {
        bad = std::string("attribute ") + name + " is empty";
    }
    else if (f->type == nvinfer1::PluginFieldType::kFLOAT32)
    {
        out = *static_cast<float const*>(f->data);
    }
    else if (f->type == nvinfer1::PluginFieldType::kFLOAT64)
    {
        out = *static_cast<double const*>(f->data);
    }
    else
    {
        bad = std::string("attribute ") + name + " must be a float";
    }
    return true;
}

bool FieldReader::getInt(char const* name, int64_t& out, std::string& bad) const
{
    nvinfer1::PluginField const* f = find(name);
    if (!f)
    {
        return false;
    }
    if (f->length < 1 || !f->data)
    {
        bad = std::string("attribute ") + name + " is empty";
    }
    else if (f->type == nvinfer1::PluginFieldType::kINT32)
    {
        out = *static_cast<int32_t const*>(f->data);
    }
    else if (f->type == nvinfer1::PluginFieldType::kINT64)
    {
        out = *static_cast<int64_t const*>(f->data);
    }
    else if (f->type == nvinfer1::PluginFieldType::kINT8)
    {
        out = *static_cast<int8_t const*>(f->data);
    }
    else
    {
        bad = std::string("attribute ") + name + " must be an integer";
    }
    return true;
}

bool FieldReader::getString(char const* name, std::string& out) const
{
    nvinfer1::PluginField const* f = find(name);
    if (!f || f->type != nvinfer1::PluginFieldType::kCHAR || !f->data)
    {
        return false;
    }
    char const* text = static_cast<char const*>(f->data);
    out.assign(text, strnlen(text, static_cast<size_t>(f->length)));
    return true;
}

std::vector<std::string> FieldReader::unknown(std::vector<char const*> const& known) const
{
    std::vector<std::string> names;
    for (int32_t i = 0; mFc && i < mFc->nbFields; ++i)
    {
        char const* name = mFc->fields[i].name;
        if (!name || !std::strcmp(name, "plugin_namespace") || !std::strcmp(name, "plugin_version"))
        {
            continue;
        }
        bool isKnown = false;
        for (char const* k : known)
        {
            isKnown = isKnown || !std::strcmp(k, name);
        }
        if (!isKnown)
        {
            names.emplace_back(name);
        }
    }
    return names;
}

bool checkVersionField(FieldReader const& fields, char const* op, std::string& error)
{
    std::string version;
    if (fields.getString("plugin_version", version) && version != kPluginVersion)
    {
        error = std::string("dysink::") + op + " version " + version + " is unknown: this library implements version "
            + kPluginVersion + "; export the bundle and build the library with the same dysink-deploy";
        return false;
    }
    return true;
}

int32_t toKDtype(nvinfer1::DataType type)
{
    switch (type)
    {
    case nvinfer1::DataType::kFLOAT: return kF32;
    case nvinfer1::DataType::kHALF: return kF16;
    case nvinfer1::DataType::kBF16: return kBF16;
    default: return kAnyDtype;
    }
}

std::string dataTypeName(nvinfer1::DataType type)
{
    switch (type)
    {
    case nvinfer1::DataType::kFLOAT: return "float32";
    case nvinfer1::DataType::kHALF: return "float16";
    case nvinfer1::DataType::kBF16: return "bfloat16";
    case nvinfer1::DataType::kINT8: return "int8";
    case nvinfer1::DataType::kFP8: return "fp8 (e4m3)";
    case nvinfer1::DataType::kINT32: return "int32";
    case nvinfer1::DataType::kINT64: return "int64";
    case nvinfer1::DataType::kBOOL: return "bool";
    case nvinfer1::DataType::kUINT8: return "uint8";
    default: return "DataType " + std::to_string(static_cast<int32_t>(type));
    }
}

} // namespace dysink
