// Backtracking matcher in the style of Pike/Thompson programs run by a recursive-descent
// backtracker (Russ Cox, "Regular Expression Matching: the Virtual Machine Approach", 2009),
// which gives the leftmost-first semantics of Perl/Oniguruma.
#include "runtime/tokenizer/unicode/split_regex.h"

#include <memory>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "common/utf8.h"

namespace kbitd::runtime {
namespace {

// Simple case folding (CaseFolding.txt, status C/S) restricted to what ASCII letters fold with.
char32_t FoldCase(char32_t cp) {
  if (cp >= 'A' && cp <= 'Z') return cp + 32;
  if (cp == 0x17F) return 's';   // LATIN SMALL LETTER LONG S
  if (cp == 0x212A) return 'k';  // KELVIN SIGN
  return cp;
}

struct Node {
  enum Kind {
    kEmpty,
    kChar,
    kClass,
    kAny,
    kConcat,
    kAlt,
    kRepeat,
    kLook,
    kBegin,
    kEnd,
    kBeginText,
    kEndText
  };
  Kind kind = kEmpty;
  char32_t cp = 0;
  bool flag = false;     // kChar: fold; kLook: negative; kRepeat: greedy
  int index = 0;         // kClass
  int min = 0, max = 0;  // kRepeat; max -1 = unbounded
  std::vector<std::unique_ptr<Node>> kids;
};

bool Nullable(const Node& n) {
  switch (n.kind) {
    case Node::kChar:
    case Node::kClass:
    case Node::kAny:
      return false;
    case Node::kConcat:
      for (const auto& k : n.kids) {
        if (!Nullable(*k)) return false;
      }
      return true;
    case Node::kAlt:
      for (const auto& k : n.kids) {
        if (Nullable(*k)) return true;
      }
      return false;
    case Node::kRepeat:
      return n.min == 0 || Nullable(*n.kids[0]);
    default:
      return true;
  }
}

struct Property {
  std::string_view name;
  CategoryMask mask;
};

CategoryMask Bits(std::initializer_list<UnicodeCategory> cats) {
  CategoryMask m = 0;
  for (UnicodeCategory c : cats) m |= CategoryBit(c);
  return m;
}

bool LookupProperty(std::string_view name, CategoryMask& mask) {
  using U = UnicodeCategory;
  static const Property kProperties[] = {
      {"L", kLetterMask},
      {"Letter", kLetterMask},
      {"LC", Bits({U::kLu, U::kLl, U::kLt})},
      {"L&", Bits({U::kLu, U::kLl, U::kLt})},
      {"Lu", Bits({U::kLu})},
      {"Ll", Bits({U::kLl})},
      {"Lt", Bits({U::kLt})},
      {"Lm", Bits({U::kLm})},
      {"Lo", Bits({U::kLo})},
      {"M", kMarkMask},
      {"Mark", kMarkMask},
      {"Mn", Bits({U::kMn})},
      {"Mc", Bits({U::kMc})},
      {"Me", Bits({U::kMe})},
      {"N", kNumberMask},
      {"Number", kNumberMask},
      {"Nd", Bits({U::kNd})},
      {"Nl", Bits({U::kNl})},
      {"No", Bits({U::kNo})},
      {"P", Bits({U::kPc, U::kPd, U::kPs, U::kPe, U::kPi, U::kPf, U::kPo})},
      {"Punctuation", Bits({U::kPc, U::kPd, U::kPs, U::kPe, U::kPi, U::kPf, U::kPo})},
      {"Pc", Bits({U::kPc})},
      {"Pd", Bits({U::kPd})},
      {"Ps", Bits({U::kPs})},
      {"Pe", Bits({U::kPe})},
      {"Pi", Bits({U::kPi})},
      {"Pf", Bits({U::kPf})},
      {"Po", Bits({U::kPo})},
      {"S", Bits({U::kSm, U::kSc, U::kSk, U::kSo})},
      {"Symbol", Bits({U::kSm, U::kSc, U::kSk, U::kSo})},
      {"Sm", Bits({U::kSm})},
      {"Sc", Bits({U::kSc})},
      {"Sk", Bits({U::kSk})},
      {"So", Bits({U::kSo})},
      {"Z", Bits({U::kZs, U::kZl, U::kZp})},
      {"Separator", Bits({U::kZs, U::kZl, U::kZp})},
      {"Zs", Bits({U::kZs})},
      {"Zl", Bits({U::kZl})},
      {"Zp", Bits({U::kZp})},
      {"C", Bits({U::kCc, U::kCf, U::kCs, U::kCo, U::kCn})},
      {"Other", Bits({U::kCc, U::kCf, U::kCs, U::kCo, U::kCn})},
      {"Cc", Bits({U::kCc})},
      {"Cf", Bits({U::kCf})},
      {"Cs", Bits({U::kCs})},
      {"Co", Bits({U::kCo})},
      {"Cn", Bits({U::kCn})},
  };
  for (const Property& p : kProperties) {
    if (p.name == name) {
      mask = p.mask;
      return true;
    }
  }
  return false;
}

}  // namespace

bool SplitRegex::CharClass::MatchesSlow(char32_t cp) const {
  bool in = false;
  const char32_t folded = fold ? FoldCase(cp) : cp;
  for (const auto& [lo, hi] : ranges) {
    if ((cp >= lo && cp <= hi) || (folded >= lo && folded <= hi)) {
      in = true;
      break;
    }
    if (fold && lo <= 'z' && hi >= 'a' && cp >= 'a' && cp <= 'z') {
      // Upper-case range member of a lower-case code point, e.g. [A-Z] with (?i) and 'q'.
      const char32_t upper = cp - 32;
      if (upper >= lo && upper <= hi) {
        in = true;
        break;
      }
    }
  }
  if (!in && (categories | not_categories)) {
    const CategoryMask bit = CategoryBit(GetUnicodeCategory(cp));
    in = (bit & categories) != 0 || (not_categories != 0 && (bit & not_categories) == 0);
  }
  if (!in && (space || not_space)) {
    const bool ws = IsUnicodeWhiteSpace(cp);
    in = (space && ws) || (not_space && !ws);
  }
  if (!in && (word || not_word)) {
    const bool w = IsWordChar(cp);
    in = (word && w) || (not_word && !w);
  }
  return in != negate;
}

bool SplitRegex::CharClass::Matches(char32_t cp) const {
  if (cp < 128) return (ascii[cp >> 6] >> (cp & 63)) & 1;
  return MatchesSlow(cp);
}

// Parses a pattern into a Node tree and generates the program.
class SplitRegexCompiler {
 public:
  SplitRegexCompiler(std::string_view pattern, SplitRegex& re) : pattern_(pattern), re_(re) {
    size_t pos = 0;
    while (pos < pattern.size()) cps_.push_back(DecodeUtf8(pattern, pos));
  }

  absl::Status Compile() {
    KBITD_ASSIGN_OR_RETURN(std::unique_ptr<Node> root, ParseAlt(false));
    if (pos_ != cps_.size()) return Error("unbalanced ')'");
    KBITD_RETURN_IF_ERROR(Emit(*root));
    re_.program_.push_back({SplitRegex::Op::kMatch});
    return absl::OkStatus();
  }

 private:
  absl::Status Error(std::string_view what) const {
    return absl::InvalidArgumentError(absl::StrCat(
        "regex \"", std::string(pattern_), "\": ", std::string(what), " at character ", pos_));
  }
  bool AtEnd() const { return pos_ >= cps_.size(); }
  char32_t Peek(size_t ahead = 0) const {
    return pos_ + ahead < cps_.size() ? cps_[pos_ + ahead] : 0;
  }

  absl::StatusOr<std::unique_ptr<Node>> ParseAlt(bool fold) {
    auto alt = std::make_unique<Node>();
    alt->kind = Node::kAlt;
    while (true) {
      KBITD_ASSIGN_OR_RETURN(std::unique_ptr<Node> seq, ParseSeq(fold));
      alt->kids.push_back(std::move(seq));
      if (AtEnd() || Peek() != '|') break;
      ++pos_;
    }
    if (alt->kids.size() == 1) return std::move(alt->kids[0]);
    return alt;
  }

  absl::StatusOr<std::unique_ptr<Node>> ParseSeq(bool fold) {
    auto seq = std::make_unique<Node>();
    seq->kind = Node::kConcat;
    while (!AtEnd() && Peek() != '|' && Peek() != ')') {
      // An inline (?i) turns on case folding for the rest of the enclosing group.
      if (Peek() == '(' && Peek(1) == '?' && Peek(2) == 'i' && Peek(3) == ')') {
        pos_ += 4;
        fold = true;
        continue;
      }
      KBITD_ASSIGN_OR_RETURN(std::unique_ptr<Node> atom, ParseAtom(fold));
      KBITD_ASSIGN_OR_RETURN(atom, ParseQuantifier(std::move(atom)));
      seq->kids.push_back(std::move(atom));
    }
    return seq;
  }

  // Parses "{n}", "{n,}", "{n,m}" at pos_; false (pos_ unchanged) when it is not a quantifier.
  bool ParseBraces(int& min, int& max) {
    size_t p = pos_ + 1;
    auto number = [&](int& out) {
      size_t start = p;
      long value = 0;
      while (p < cps_.size() && cps_[p] >= '0' && cps_[p] <= '9' && value < 100000) {
        value = value * 10 + (cps_[p++] - '0');
      }
      out = static_cast<int>(value);
      return p > start;
    };
    if (!number(min)) return false;
    max = min;
    if (p < cps_.size() && cps_[p] == ',') {
      ++p;
      if (!number(max)) max = -1;
    }
    if (p >= cps_.size() || cps_[p] != '}') return false;
    pos_ = p + 1;
    return true;
  }

  absl::StatusOr<std::unique_ptr<Node>> ParseQuantifier(std::unique_ptr<Node> atom) {
    while (!AtEnd()) {
      int min, max;
      const char32_t c = Peek();
      if (c == '*') {
        min = 0, max = -1, ++pos_;
      } else if (c == '+') {
        min = 1, max = -1, ++pos_;
      } else if (c == '?') {
        min = 0, max = 1, ++pos_;
      } else if (c == '{' && ParseBraces(min, max)) {
        if (max != -1 && max < min) return Error("quantifier {n,m} with m < n");
        if (max > 1000 || min > 1000) return Error("quantifier bound over 1000");
      } else {
        break;
      }
      bool greedy = true;
      if (!AtEnd() && Peek() == '?') {
        greedy = false;
        ++pos_;
      } else if (!AtEnd() && Peek() == '+') {
        return Error("possessive quantifiers are not supported");
      }
      if (atom->kind == Node::kBegin || atom->kind == Node::kEnd || atom->kind == Node::kLook) {
        return Error("quantifier on an assertion");
      }
      if (max == -1 && Nullable(*atom)) {
        return Error("unbounded quantifier on an expression that can match empty");
      }
      auto rep = std::make_unique<Node>();
      rep->kind = Node::kRepeat;
      rep->min = min;
      rep->max = max;
      rep->flag = greedy;
      rep->kids.push_back(std::move(atom));
      atom = std::move(rep);
    }
    return atom;
  }

  absl::StatusOr<std::unique_ptr<Node>> ParseAtom(bool fold) {
    auto node = std::make_unique<Node>();
    const char32_t c = cps_[pos_++];
    switch (c) {
      case '(': {
        bool inner_fold = fold;
        if (Peek() == '?') {
          if (Peek(1) == ':') {
            pos_ += 2;
          } else if (Peek(1) == 'i' && Peek(2) == ':') {
            inner_fold = true;
            pos_ += 3;
          } else if (Peek(1) == '=' || Peek(1) == '!') {
            node->kind = Node::kLook;
            node->flag = Peek(1) == '!';
            pos_ += 2;
          } else {
            return Error("unsupported group syntax (lookbehind, named group or flag)");
          }
        }
        KBITD_ASSIGN_OR_RETURN(std::unique_ptr<Node> inner, ParseAlt(inner_fold));
        if (AtEnd() || Peek() != ')') return Error("missing ')'");
        ++pos_;
        if (node->kind == Node::kLook) {
          node->kids.push_back(std::move(inner));
          return node;
        }
        return inner;
      }
      case ')':
        return Error("unbalanced ')'");
      case '*':
      case '+':
      case '?':
        return Error("quantifier without an operand");
      case '[':
        return ParseClass(fold);
      case '.':
        node->kind = Node::kAny;
        return node;
      case '^':
        node->kind = Node::kBegin;
        return node;
      case '$':
        node->kind = Node::kEnd;
        return node;
      case '\\':
        return ParseEscape(fold);
      default:
        node->kind = Node::kChar;
        node->cp = fold ? FoldCase(c) : c;
        node->flag = fold;
        return node;
    }
  }

  absl::StatusOr<char32_t> ParseHex(int digits) {
    char32_t value = 0;
    bool braced = digits == 0;
    if (braced) {
      if (Peek() != '{') return Error("expected '{' after \\x");
      ++pos_;
    }
    int n = 0;
    while (!AtEnd() && (braced ? Peek() != '}' : n < digits)) {
      const char32_t h = cps_[pos_++];
      int v;
      if (h >= '0' && h <= '9')
        v = h - '0';
      else if (h >= 'a' && h <= 'f')
        v = h - 'a' + 10;
      else if (h >= 'A' && h <= 'F')
        v = h - 'A' + 10;
      else
        return Error("invalid hex escape");
      value = value * 16 + v;
      if (++n > 6) return Error("hex escape too long");
    }
    if (braced) {
      if (AtEnd()) return Error("unterminated \\x{...}");
      ++pos_;
    }
    if (n == 0 || (!braced && n != digits)) return Error("invalid hex escape");
    if (value > 0x10FFFF) return Error("code point out of range");
    return value;
  }

  // Parses an escape after '\' into class items when `cls` is given (inside [...] or for \s-like
  // escapes), else returns a literal code point through `literal`.
  absl::Status ParseEscapeInto(SplitRegex::CharClass& cls, bool& is_class, char32_t& literal) {
    if (AtEnd()) return Error("trailing backslash");
    const char32_t e = cps_[pos_++];
    is_class = true;
    switch (e) {
      case 's':
        cls.space = true;
        return absl::OkStatus();
      case 'S':
        cls.not_space = true;
        return absl::OkStatus();
      case 'w':
        cls.word = true;
        return absl::OkStatus();
      case 'W':
        cls.not_word = true;
        return absl::OkStatus();
      case 'd':
        cls.categories |= CategoryBit(UnicodeCategory::kNd);
        return absl::OkStatus();
      case 'D':
        cls.not_categories |= CategoryBit(UnicodeCategory::kNd);
        return absl::OkStatus();
      case 'p':
      case 'P': {
        std::string name;
        if (Peek() == '{') {
          ++pos_;
          while (!AtEnd() && Peek() != '}') AppendUtf8(cps_[pos_++], name);
          if (AtEnd()) return Error("unterminated \\p{...}");
          ++pos_;
        } else if (!AtEnd()) {
          AppendUtf8(cps_[pos_++], name);
        }
        bool negated = e == 'P';
        if (!name.empty() && name[0] == '^') {
          negated = !negated;
          name.erase(0, 1);
        }
        CategoryMask mask;
        if (!LookupProperty(name, mask)) {
          return Error(absl::StrCat("unsupported Unicode property \\p{", name, "}"));
        }
        (negated ? cls.not_categories : cls.categories) |= mask;
        return absl::OkStatus();
      }
      default:
        break;
    }
    is_class = false;
    switch (e) {
      case 'n':
        literal = '\n';
        break;
      case 'r':
        literal = '\r';
        break;
      case 't':
        literal = '\t';
        break;
      case 'f':
        literal = '\f';
        break;
      case 'v':
        literal = '\v';
        break;
      case 'a':
        literal = 0x07;
        break;
      case 'e':
        literal = 0x1B;
        break;
      case 'x': {
        KBITD_ASSIGN_OR_RETURN(literal, ParseHex(Peek() == '{' ? 0 : 2));
        break;
      }
      case 'u': {
        KBITD_ASSIGN_OR_RETURN(literal, ParseHex(4));
        break;
      }
      default:
        if ((e >= 'a' && e <= 'z') || (e >= 'A' && e <= 'Z') || (e >= '0' && e <= '9')) {
          return Error(absl::StrCat("unsupported escape \\", std::string(1, char(e))));
        }
        literal = e;  // escaped punctuation or other symbol stands for itself
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::unique_ptr<Node>> ParseEscape(bool fold) {
    auto node = std::make_unique<Node>();
    if (Peek() == 'A' || Peek() == 'z') {
      node->kind = Peek() == 'A' ? Node::kBeginText : Node::kEndText;
      ++pos_;
      return node;
    }
    SplitRegex::CharClass cls;
    bool is_class;
    char32_t literal = 0;
    KBITD_RETURN_IF_ERROR(ParseEscapeInto(cls, is_class, literal));
    if (is_class) return AddClass(std::move(cls), fold);
    node->kind = Node::kChar;
    node->cp = fold ? FoldCase(literal) : literal;
    node->flag = fold;
    return node;
  }

  absl::StatusOr<std::unique_ptr<Node>> ParseClass(bool fold) {
    SplitRegex::CharClass cls;
    if (Peek() == '^') {
      cls.negate = true;
      ++pos_;
    }
    bool first = true;
    while (true) {
      if (AtEnd()) return Error("unterminated character class");
      char32_t c = cps_[pos_];
      if (c == ']' && !first) {
        ++pos_;
        break;
      }
      first = false;
      if (c == '[') return Error("nested character classes are not supported");
      if (c == '&' && Peek(1) == '&') return Error("class intersection is not supported");
      ++pos_;
      char32_t lo = c;
      if (c == '\\') {
        bool is_class;
        KBITD_RETURN_IF_ERROR(ParseEscapeInto(cls, is_class, lo));
        if (is_class) continue;
      }
      char32_t hi = lo;
      if (Peek() == '-' && Peek(1) != ']' && pos_ + 1 < cps_.size()) {
        ++pos_;
        hi = cps_[pos_++];
        if (hi == '\\') {
          bool is_class;
          SplitRegex::CharClass unused;
          KBITD_RETURN_IF_ERROR(ParseEscapeInto(unused, is_class, hi));
          if (is_class) return Error("class escape used as a range bound");
        } else if (hi == '[') {
          return Error("nested character classes are not supported");
        }
        if (hi < lo) return Error("character class range out of order");
      }
      cls.ranges.emplace_back(lo, hi);
    }
    return AddClass(std::move(cls), fold);
  }

  std::unique_ptr<Node> AddClass(SplitRegex::CharClass cls, bool fold) {
    cls.fold = fold;
    for (char32_t cp = 0; cp < 128; ++cp) {
      if (cls.MatchesSlow(cp)) cls.ascii[cp >> 6] |= uint64_t{1} << (cp & 63);
    }
    auto node = std::make_unique<Node>();
    node->kind = Node::kClass;
    node->index = static_cast<int>(re_.classes_.size());
    re_.classes_.push_back(std::move(cls));
    return node;
  }

  int Here() const { return static_cast<int>(re_.program_.size()); }
  int Push(SplitRegex::Inst inst) {
    re_.program_.push_back(inst);
    return Here() - 1;
  }

  absl::Status Emit(const Node& n) {
    using Op = SplitRegex::Op;
    if (re_.program_.size() > 100000) return Error("pattern too large");
    switch (n.kind) {
      case Node::kEmpty:
        return absl::OkStatus();
      case Node::kChar:
        Push({Op::kChar, n.flag, n.cp});
        return absl::OkStatus();
      case Node::kClass:
        Push({Op::kClass, false, 0, n.index});
        return absl::OkStatus();
      case Node::kAny:
        Push({Op::kAny});
        return absl::OkStatus();
      case Node::kBegin:
      case Node::kBeginText:
        Push({Op::kBegin, n.kind == Node::kBeginText});
        return absl::OkStatus();
      case Node::kEnd:
      case Node::kEndText:
        Push({Op::kEnd, n.kind == Node::kEndText});
        return absl::OkStatus();
      case Node::kConcat:
        for (const auto& k : n.kids) KBITD_RETURN_IF_ERROR(Emit(*k));
        return absl::OkStatus();
      case Node::kAlt: {
        std::vector<int> jumps;
        for (size_t i = 0; i < n.kids.size(); ++i) {
          int split = -1;
          if (i + 1 < n.kids.size()) split = Push({Op::kSplit, false, 0, Here() + 1});
          KBITD_RETURN_IF_ERROR(Emit(*n.kids[i]));
          if (i + 1 < n.kids.size()) {
            jumps.push_back(Push({Op::kJmp}));
            re_.program_[split].y = Here();
          }
        }
        for (int j : jumps) re_.program_[j].x = Here();
        return absl::OkStatus();
      }
      case Node::kLook: {
        const int look = Push({Op::kLook, n.flag});
        KBITD_RETURN_IF_ERROR(Emit(*n.kids[0]));
        Push({Op::kMatch});
        re_.program_[look].x = Here();
        return absl::OkStatus();
      }
      case Node::kRepeat: {
        const Node& body = *n.kids[0];
        for (int i = 0; i < n.min; ++i) KBITD_RETURN_IF_ERROR(Emit(body));
        if (n.max == -1) {
          const int split = Push({Op::kSplit});
          KBITD_RETURN_IF_ERROR(Emit(body));
          Push({Op::kJmp, false, 0, split});
          SetSplit(split, split + 1, Here(), n.flag);
          return absl::OkStatus();
        }
        std::vector<int> splits;
        for (int i = n.min; i < n.max; ++i) {
          splits.push_back(Push({Op::kSplit}));
          KBITD_RETURN_IF_ERROR(Emit(body));
        }
        for (int s : splits) SetSplit(s, s + 1, Here(), n.flag);
        return absl::OkStatus();
      }
    }
    return absl::OkStatus();
  }

  void SetSplit(int split, int body, int out, bool greedy) {
    re_.program_[split].x = greedy ? body : out;
    re_.program_[split].y = greedy ? out : body;
  }

  std::string_view pattern_;
  SplitRegex& re_;
  std::vector<char32_t> cps_;
  size_t pos_ = 0;
};

absl::StatusOr<SplitRegex> SplitRegex::Compile(std::string_view pattern) {
  if (FindInvalidUtf8(pattern).has_value()) {
    return absl::InvalidArgumentError("regex pattern is not valid UTF-8");
  }
  SplitRegex re;
  re.pattern_ = std::string(pattern);
  SplitRegexCompiler compiler(pattern, re);
  KBITD_RETURN_IF_ERROR(compiler.Compile());
  return re;
}

long SplitRegex::Run(int start_pc, size_t start_pos, const std::vector<char32_t>& cps,
                     std::vector<std::pair<int, size_t>>& stack) const {
  const size_t base = stack.size();
  stack.emplace_back(start_pc, start_pos);
  const size_t n = cps.size();
  while (stack.size() > base) {
    auto [pc, pos] = stack.back();
    stack.pop_back();
    while (true) {
      const Inst& inst = program_[pc];
      bool ok = true;
      switch (inst.op) {
        case Op::kChar:
          ok = pos < n && (inst.flag ? FoldCase(cps[pos]) : cps[pos]) == inst.cp;
          ++pos, ++pc;
          break;
        case Op::kClass:
          ok = pos < n && classes_[inst.x].Matches(cps[pos]);
          ++pos, ++pc;
          break;
        case Op::kAny:
          ok = pos < n && cps[pos] != '\n';
          ++pos, ++pc;
          break;
        case Op::kBegin:
          ok = pos == 0 || (!inst.flag && cps[pos - 1] == '\n');
          ++pc;
          break;
        case Op::kEnd:
          ok = pos == n || (!inst.flag && cps[pos] == '\n');
          ++pc;
          break;
        case Op::kSplit:
          stack.emplace_back(inst.y, pos);
          pc = inst.x;
          break;
        case Op::kJmp:
          pc = inst.x;
          break;
        case Op::kMatch:
          stack.resize(base);
          return static_cast<long>(pos);
        case Op::kLook: {
          const bool found = Run(pc + 1, pos, cps, stack) >= 0;
          ok = found != inst.flag;
          pc = inst.x;
          break;
        }
      }
      if (!ok) break;
    }
  }
  return -1;
}

void SplitRegex::FindAll(std::string_view text, std::vector<Match>& out) const {
  std::vector<char32_t> cps;
  std::vector<size_t> offsets;
  cps.reserve(text.size());
  offsets.reserve(text.size() + 1);
  size_t byte = 0;
  while (byte < text.size()) {
    offsets.push_back(byte);
    cps.push_back(DecodeUtf8(text, byte));
  }
  offsets.push_back(text.size());
  std::vector<std::pair<int, size_t>> stack;
  size_t pos = 0;
  while (pos <= cps.size()) {
    long end = -1;
    size_t start = pos;
    for (; start <= cps.size(); ++start) {
      end = Run(0, start, cps, stack);
      if (end >= 0) break;
    }
    if (end < 0) break;
    out.emplace_back(offsets[start], offsets[end]);
    pos = static_cast<size_t>(end) > start ? static_cast<size_t>(end) : start + 1;
  }
}

}  // namespace kbitd::runtime
