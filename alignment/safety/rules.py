"""Bilingual (en + zh) safety rules and PII scrubbing: the rule-based half of the RAISE filters.

A rule fires on a *request for operational help* with a harmful goal, not on a topic word:
"how do I make a pipe bomb" fires, "the movie bombed" and "kill the python process" do not.
English rules are regexes over lower-cased text with word boundaries; Chinese rules pair an
intent cue (怎么/如何/教我/步骤...) with a harmful object inside a short window, because
Chinese has no word boundaries and bare keywords (炸弹 appears in film reviews) over-fire.

What the rules do not catch (said plainly; a classifier plugs in through
``alignment.safety.filter.Classifier`` for that): paraphrases without the listed cue words,
other languages, obfuscation (l33t, spacing, homoglyphs, pinyin), harmful content that is
not phrased as a request (e.g. a finished recipe pasted as a "story"), multi-turn build-up,
and context-dependent harms (harassment of a named person, targeted misinformation).

PII scrubbing replaces e-mail addresses, phone numbers (CN mobile, NANP, international
``+CC``), Chinese resident ID numbers (18 characters, checksum verified), US SSNs and payment
card numbers (Luhn verified) with typed placeholders.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# --------------------------------------------------------------------------- harmful requests

_EN_ASK = r"(?:how (?:do|can|could|would|should) (?:i|you|we|one)|how to|steps? to|instructions? (?:for|to|on)|guide (?:to|for|on)|teach me(?: how)? to|help me|tell me how to|explain how to|show me how to|ways? to|best way to|recipe for)"

EN_RULES: dict[str, list[str]] = {
    "weapons": [
        _EN_ASK + r"\b.{0,40}\b(?:make|build|assemble|construct|create|synthesi[sz]e)\b.{0,30}\b(?:(?<!bath )(?<!seed )(?<!smoke )(?<!glitter )bomb|explosive|ied|molotov|nerve agent|sarin|chemical weapon|bioweapon)s?\b",
        r"\b(?:3d[- ]print|manufacture|build)\b.{0,20}\b(?:untraceable|ghost) (?:gun|firearm)s?\b",
    ],
    "malware": [
        _EN_ASK + r"\b.{0,40}\b(?:write|create|build|code|make|deploy|spread)\b.{0,30}\b(?:ransomware|keylogger|botnet|computer virus|worm|trojan|rootkit)\b",
        _EN_ASK + r"\b.{0,30}\b(?:hack|break) into\b.{0,30}\b(?:someone(?:'s)?|my (?:ex|neighbou?r|boss)(?:'s)?|an?other person(?:'s)?|(?:his|her|their))\b",
    ],
    "drugs": [
        _EN_ASK + r"\b.{0,40}\b(?:make|cook|synthesi[sz]e|produce|extract)\b.{0,30}\b(?:meth(?:amphetamine)?|fentanyl|heroin|cocaine|crack|lsd)\b",
    ],
    "violence": [
        _EN_ASK + r"\b.{0,40}\b(?:kill|murder|poison|strangle|hurt|kidnap)\b.{0,25}\b(?:someone|a person|people|my (?:wife|husband|boss|neighbou?r|father|mother|teacher)|him|her|them)\b",
        _EN_ASK + r"\b.{0,30}\b(?:get away with|hide)\b.{0,20}\b(?:murder|a body|killing)\b",
    ],
    "self_harm": [
        _EN_ASK + r"\b.{0,40}\b(?:kill myself|end my life|commit suicide|self[- ]harm|cut myself)\b",
        r"\b(?:painless|quickest|easiest) way to (?:die|kill myself|end my life)\b",
    ],
    "fraud": [
        _EN_ASK + r"\b.{0,40}\b(?:launder money|forge (?:a |an )?(?:passport|id|signature|check|cheque)|counterfeit (?:money|bills|currency)|steal (?:a |an |someone'?s )?(?:identity|credit card))\b",
        _EN_ASK + r"\b.{0,30}\b(?:(?:write|create|make|send|set up|build) (?:a |an )?phishing (?:email|page|site)|scam (?:elderly|old) people)\b",
    ],
}

_ZH_ASK = r"(?:怎么|怎样|如何|教我|告诉我|步骤|方法|详细说明|给我.{0,4}(?:教程|配方|方法))"
# the window between cue and object may not contain prevention words ("how to PREVENT fraud")
_ZH_NEAR = r"(?:(?!防|预防|识别|举报|避免|打击|治疗|戒).){0,12}"

ZH_RULES: dict[str, list[str]] = {
    "weapons": [_ZH_ASK + _ZH_NEAR + r"(?:制作|制造|组装|合成|自制)" + _ZH_NEAR + r"(?:炸弹|炸药|爆炸物|土制枪|毒气|化学武器|生物武器)"],
    "malware": [_ZH_ASK + _ZH_NEAR + r"(?:编写|制作|写|开发|传播)" + _ZH_NEAR + r"(?:勒索病毒|木马|病毒程序|键盘记录器|僵尸网络)",
                _ZH_ASK + _ZH_NEAR + r"(?:入侵|黑进|盗取)" + _ZH_NEAR + r"(?:别人|他人|邻居|前任|同事)的"],
    "drugs": [_ZH_ASK + _ZH_NEAR + r"(?:制作|制造|合成|提炼|提取)" + _ZH_NEAR + r"(?:冰毒|甲基苯丙胺|海洛因|芬太尼|可卡因|毒品)"],
    "violence": [_ZH_ASK + _ZH_NEAR + r"(?:杀死|杀掉|毒死|谋杀|绑架|伤害)" + _ZH_NEAR + r"(?:一个人|别人|他人|我的?(?:妻子|丈夫|老板|邻居|老师)|他|她)"],
    "self_harm": [_ZH_ASK + _ZH_NEAR + r"(?:自杀|结束(?:自己的)?生命|割腕|自残)", r"(?:无痛|最快|最简单)的?(?:自杀|死)(?:方法|方式)"],
    "fraud": [_ZH_ASK + _ZH_NEAR + r"(?:洗钱|伪造(?:护照|身份证|签名|发票)|制造假币|盗刷信用卡|(?:实施|进行|搞)电信诈骗)"],
}

CATEGORIES = tuple(EN_RULES)


@dataclass(frozen=True)
class Hit:
    """One rule match: ``category`` (e.g. ``weapons``), ``rule`` (``en:weapons:0``), matched ``span``."""

    category: str
    rule: str
    span: str


class RuleSet:
    """Compiled bilingual rules. ``RuleSet().check(text)`` lists the hits (empty = passes).

    Args:
        categories (`list[str]`, *optional*): restrict to these categories (default: all).
        extra (`dict[str, list[str]]`, *optional*): more regexes per category (any language).
    """

    def __init__(self, categories: list[str] | None = None, extra: dict[str, list[str]] | None = None):
        cats = set(categories or CATEGORIES)
        unknown = cats - set(CATEGORIES) - set(extra or {})
        if unknown:
            raise ValueError(f"unknown safety categories {sorted(unknown)}; known: {list(CATEGORIES)}")
        self._rules: list[tuple[str, str, re.Pattern]] = []
        for lang, table in (("en", EN_RULES), ("zh", ZH_RULES), ("extra", extra or {})):
            for cat, patterns in table.items():
                if cat in cats or lang == "extra":
                    for i, pat in enumerate(patterns):
                        self._rules.append((cat, f"{lang}:{cat}:{i}", re.compile(pat, re.IGNORECASE | re.DOTALL)))

    def check(self, text: str) -> list[Hit]:
        low = text.lower()
        hits = []
        for cat, name, rx in self._rules:
            m = rx.search(low)
            if m:
                hits.append(Hit(cat, name, m.group(0)[:80]))
        return hits


# --------------------------------------------------------------------------- PII

_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b")
_CN_ID = re.compile(r"(?<![0-9A-Za-z])[1-9]\d{5}(?:19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[0-9Xx](?![0-9A-Za-z])")
_SSN = re.compile(r"(?<!\d)(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?!\d)")
_CARD = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")
_PHONE = re.compile(
    r"(?<![\d+])(?:"
    r"(?:\+?86[ -]?)?1[3-9]\d[ -]?\d{4}[ -]?\d{4}"          # CN mobile
    r"|\+\d{1,3}[ -]?\(?\d{1,4}\)?(?:[ -]?\d{2,4}){2,3}"     # international with country code
    r"|\(?\b[2-9]\d{2}\)?[ .-]\d{3}[ .-]\d{4}"               # NANP
    r")(?!\d)")

_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def cn_id_valid(s: str) -> bool:
    """ISO 7064 MOD 11-2 check digit of an 18-character Chinese resident ID number."""
    total = sum(int(d) * w for d, w in zip(s[:17], _ID_WEIGHTS))
    return "10X98765432"[total % 11] == s[17].upper()


def luhn_valid(digits: str) -> bool:
    nums = [int(c) for c in digits][::-1]
    total = sum(n if i % 2 == 0 else (n * 2 - 9 if n * 2 > 9 else n * 2) for i, n in enumerate(nums))
    return total % 10 == 0


def scrub_pii(text: str) -> tuple[str, dict[str, int]]:
    """Replace PII with ``[EMAIL]``, ``[ID]``, ``[SSN]``, ``[CARD]``, ``[PHONE]``; returns (text, counts)."""
    counts: dict[str, int] = {}

    def sub(rx: re.Pattern, tag: str, text: str, valid=None) -> str:
        def repl(m: re.Match) -> str:
            if valid is not None and not valid(m.group(0)):
                return m.group(0)
            counts[tag] = counts.get(tag, 0) + 1
            return f"[{tag}]"

        return rx.sub(repl, text)

    text = sub(_EMAIL, "EMAIL", text)
    text = sub(_CN_ID, "ID", text, cn_id_valid)
    text = sub(_SSN, "SSN", text)
    text = sub(_CARD, "CARD", text, lambda s: luhn_valid(re.sub(r"\D", "", s)))
    text = sub(_PHONE, "PHONE", text)
    return text, counts
