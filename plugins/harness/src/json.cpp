#include "json.h"

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

namespace harness
{

Json const* Json::get(char const* name) const
{
    for (auto const& m : members)
    {
        if (m.first == name)
        {
            return &m.second;
        }
    }
    return nullptr;
}

namespace
{
class Parser
{
public:
    explicit Parser(std::string const& text)
        : mText(text)
    {
    }

    void document(Json& out)
    {
        value(out, 0);
        skipSpace();
        if (mPos != mText.size())
        {
            fail("trailing characters after the JSON value");
        }
    }

private:
    [[noreturn]] void fail(std::string const& what) const
    {
        throw std::runtime_error(what + " at offset " + std::to_string(mPos));
    }

    void skipSpace()
    {
        while (mPos < mText.size() && std::strchr(" \t\r\n", mText[mPos]) && mText[mPos] != '\0')
        {
            ++mPos;
        }
    }

    bool consume(char const* word)
    {
        size_t n = std::strlen(word);
        if (mText.compare(mPos, n, word) == 0)
        {
            mPos += n;
            return true;
        }
        return false;
    }

    void value(Json& out, int depth)
    {
        if (depth > 32)
        {
            fail("JSON nested too deeply");
        }
        skipSpace();
        if (mPos >= mText.size())
        {
            fail("unexpected end of JSON");
        }
        char c = mText[mPos];
        if (c == '{')
        {
            object(out, depth);
        }
        else if (c == '[')
        {
            array(out, depth);
        }
        else if (c == '"')
        {
            out.kind = Json::Kind::kString;
            out.text = string();
        }
        else if (consume("true"))
        {
            out.kind = Json::Kind::kBool;
            out.boolean = true;
        }
        else if (consume("false"))
        {
            out.kind = Json::Kind::kBool;
        }
        else if (consume("null"))
        {
            out.kind = Json::Kind::kNull;
        }
        else
        {
            number(out);
        }
    }

    void object(Json& out, int depth)
    {
        out.kind = Json::Kind::kObject;
        ++mPos;
        skipSpace();
        if (consume("}"))
        {
            return;
        }
        while (true)
        {
            skipSpace();
            if (mPos >= mText.size() || mText[mPos] != '"')
            {
                fail("expected a member name");
            }
            std::string name = string();
            skipSpace();
            if (!consume(":"))
            {
                fail("expected ':'");
            }
            out.members.emplace_back(name, Json{});
            value(out.members.back().second, depth + 1);
            skipSpace();
            if (consume("}"))
            {
                return;
            }
            if (!consume(","))
            {
                fail("expected ',' or '}'");
            }
        }
    }

    void array(Json& out, int depth)
    {
        out.kind = Json::Kind::kArray;
        ++mPos;
        skipSpace();
        if (consume("]"))
        {
            return;
        }
        while (true)
        {
            out.items.emplace_back();
            value(out.items.back(), depth + 1);
            skipSpace();
            if (consume("]"))
            {
                return;
            }
            if (!consume(","))
            {
                fail("expected ',' or ']'");
            }
        }
    }

    std::string string()
    {
        std::string s;
        ++mPos;   // opening quote
        while (mPos < mText.size() && mText[mPos] != '"')
        {
            char c = mText[mPos++];
            if (c != '\\')
            {
                s += c;
                continue;
            }
            if (mPos >= mText.size())
            {
                break;
            }
            char e = mText[mPos++];
            switch (e)
            {
            case 'n': s += '\n'; break;
            case 't': s += '\t'; break;
            case 'r': s += '\r'; break;
            case 'b': s += '\b'; break;
            case 'f': s += '\f'; break;
            case 'u':
            {
                if (mPos + 4 > mText.size())
                {
                    fail("short \\u escape");
                }
                unsigned long code = std::strtoul(mText.substr(mPos, 4).c_str(), nullptr, 16);
                mPos += 4;
                if (code >= 0x80)
                {
                    fail("only ASCII \\u escapes are supported");
                }
                s += static_cast<char>(code);
                break;
            }
            default: s += e; break;   // \" \\ \/
            }
        }
        if (!consume("\""))
        {
            fail("unterminated string");
        }
        return s;
    }

    void number(Json& out)
    {
        size_t start = mPos;
        while (mPos < mText.size() && std::strchr("+-0123456789.eE", mText[mPos]) && mText[mPos] != '\0')
        {
            ++mPos;
        }
        std::string word = mText.substr(start, mPos - start);
        if (word.empty())
        {
            fail(std::string("unexpected character '") + mText[start] + "'");
        }
        char* end = nullptr;
        errno = 0;
        out.number = std::strtod(word.c_str(), &end);
        if (*end != '\0' || errno == ERANGE)
        {
            fail("bad number '" + word + "'");
        }
        out.kind = Json::Kind::kNumber;
        out.isInteger = word.find_first_of(".eE") == std::string::npos;
        if (out.isInteger)
        {
            out.integer = std::strtoll(word.c_str(), nullptr, 10);
            if (errno == ERANGE)
            {
                fail("integer out of range '" + word + "'");
            }
        }
    }

    std::string const& mText;
    size_t mPos = 0;
};
} // namespace

bool parseJson(std::string const& text, Json& out, std::string& error)
{
    try
    {
        Parser(text).document(out);
        return true;
    }
    catch (std::exception const& e)
    {
        error = e.what();
        return false;
    }
}

} // namespace harness
