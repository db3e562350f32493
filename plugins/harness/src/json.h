// The little JSON the harness reads (case.json): objects, arrays, strings, numbers, true/false/null.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace harness
{

struct Json
{
    enum class Kind
    {
        kNull,
        kBool,
        kNumber,
        kString,
        kArray,
        kObject
    };
    Kind kind = Kind::kNull;
    bool boolean = false;
    double number = 0;
    bool isInteger = false;   // a number written without fraction or exponent
    int64_t integer = 0;
    std::string text;
    std::vector<Json> items;
    std::vector<std::pair<std::string, Json>> members;   // in file order

    // The member `name` of an object, or nullptr.
    Json const* get(char const* name) const;
};

// Parses `text`; false with `error` (one line, with the offset) when it is not JSON.
bool parseJson(std::string const& text, Json& out, std::string& error);

} // namespace harness
