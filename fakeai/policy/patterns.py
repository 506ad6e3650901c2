"""What an attack looks like: prompt-injection / jailbreak phrasings, and payloads in identifier fields.

Strategy. False positives are bugs, so each pattern matches an attack's *form*, not its topic:
"how do I prevent SQL injection?" or a shell one-liner with `;` and `|` is ordinary text, while
"ignore all previous instructions" addressed to the model, or `' OR '1'='1` in a `user` field, is
not. Two families:

- PHRASES, for text the user (or a tool result) wrote: instruction overrides, system-prompt
  extraction, role-play jailbreaks (DAN, "you are now an unfiltered AI"), injected chat-template
  role markers. Used by injection detection (policy/security.py) and jailbreak detection
  (policy/safety.py).
- PAYLOADS, for places that hold identifiers (model, user, names, metadata values, the URL):
  SQL (tautologies, stacked queries, UNION SELECT, comments after a quote, time delays), shell
  (a metacharacter followed by a command, `$(...)`, backticks), path traversal (`..` segments,
  encoded dots, well-known system files) and markup injection (`<script`, `javascript:`).
  Never applied to prose, where all of these occur legitimately.

tests/corpus_policy.py holds >= 200 ordinary prompts that must pass and >= 100 attacks; its
test measures and prints both rates.
"""
from __future__ import annotations

import re

_I = re.I

# -- phrasings (text fields) --------------------------------------------------------------------
_DROP = r"(?:ignore|disregard|forget|override|bypass|skip|discard|drop|abandon|disobey|set\s+aside|throw\s+away)"
_RULES = (r"(?:instructions?|prompts?|rules|directions|directives|guidelines|guidance|constraints|programming|"
          r"training|polic(?:y|ies)|messages?)")
_OLD = r"(?:previous|prior|above|earlier|preceding|initial|original|system|developer|safety|existing|former|old)"
_DET = r"(?:(?:all|any|the|your|my|of|these|those|every|each|whatever)\s+)*"
# an order, not a report ("the council would disregard previous guidance"): the verb starts a clause
_CLAUSE = r"(?:^|[.!?:;,\n(\"'\-]|\b(?:please|now|just|and|then|so|kindly|must|should|you\s+to))\s*"
_OVERRIDE = rf"{_CLAUSE}{_DROP}\s+{_DET}(?:{_OLD}\s+)+{_RULES}\b"
_OVERRIDE_YOURS = rf"{_CLAUSE}{_DROP}\s+(?:all\s+(?:of\s+)?)?your\s+(?:\w+\s+)?{_RULES}\b"
_OVERRIDE_AFTER = (rf"{_CLAUSE}{_DROP}\s+{_DET}{_RULES}\s+(?:above|before\s+this|earlier|"
                   r"(?:that|which)\s+came\s+before|you(?:'ve|\s+have|\s+were)?\s+(?:been\s+)?(?:given|received|"
                   r"told|trained|programmed|configured|taught)|given\s+(?:to\s+you|earlier|above|before)|"
                   r"from\s+(?:before|earlier|the\s+system|your\s+developers?))")
_OVERRIDE_ALL = (rf"{_CLAUSE}(?:ignore|disregard|forget)\s+(?:everything|all(?: of it| that)?|anything|what)\s+"
                 r"(?:above|before this|you(?:'ve| have| were)?\s+(?:been\s+)?(?:told|instructed|given|taught))|"
                 r"\bstop\s+(?:following|obeying|listening\s+to)\s+(?:all\s+)?(?:your|the|any)\s+(?:\w+\s+)?"
                 rf"{_RULES}\b|"
                 rf"\byour\s+(?:\w+\s+)?{_RULES}\s+(?:are|is|have\s+been|has\s+been)\s+(?:now\s+)?(?:suspended|"
                 r"disabled|lifted|removed|void|revoked|overridden|cancell?ed|off)\b")
_EXTRACT = (r"\b(?:reveal|print|show|repeat|output|display|leak|dump|tell me|give me|recite|spell out|"
            r"what(?:'s| is| are| were| was))\s+(?:me\s+)?(?:back\s+)?(?:the\s+(?:\w+\s+)?(?:text|contents?|wording)\s+"
            r"of\s+)?your\s+(?:(?:full|entire|exact|original|initial|hidden|secret|complete|real|internal)\s+)*"
            r"(?:system\s+(?:prompt|message|instructions?)|(?:initial|hidden|original|secret|internal)\s+"
            r"(?:instructions?|prompt|rules)|instructions you were given|prompt)\b")
_YOUR_PROMPT = (r"\byour\s+(?:own\s+)?(?:system\s+(?:prompt|message)|(?:hidden|secret|initial|original|internal)\s+"
                r"(?:prompt|instructions)|pre-?prompt)\b|\b(?:prompt|instructions)\s+(?:that\s+)?you\s+(?:were|have\s+"
                r"been|'ve\s+been)\s+(?:initiali[sz]ed|configured|given|programmed|started|set\s+up)\s+with\b|"
                r"\bwhat\s+were\s+your\s+(?:\w+\s+)?(?:instructions|directives)\b|"
                r"\b(?:prompt|instructions|rules)\s+(?:that\s+)?your\s+(?:developers?|creators?|makers?|"
                r"programmers?|owners?)\s+(?:wrote|gave|set|defined|created)|"
                r"\b(?:prompt|instructions|rules)\s+(?:that\s+)?you(?:'re|\s+are)\s+(?:hiding|keeping|concealing|"
                r"withholding)|\b(?:words|tokens|lines|text)\s+(?:of|in|from)\s+your\s+(?:context(?:\s+window)?|"
                r"prompt|memory|instructions)\b")
_REPEAT_ABOVE = (r"\b(?:repeat|print|output|copy)\s+(?:the\s+|all\s+(?:the\s+)?|everything\s+)?(?:words|text|"
                 r"everything|content|lines?)\s+(?:above|before this)\b")
_BECOME = (r"(?:you(?:'re|\s+are)\s+(?:now\s+)?|act\s+(?:as|like)\s+|pretend\s+(?:to\s+be|you(?:'re|\s+are))\s+|"
           r"(?:respond|answer|reply|behave)\s+(?:only\s+)?as\s+|become\s+|simulate\s+|emulate\s+|roleplay\s+as\s+|"
           r"play\s+the\s+role\s+of\s+|from\s+now\s+on,?\s+you(?:'re|\s+are)\s+)")
_ROLEPLAY = (rf"\b{_BECOME}(?:an?\s+)?(?:(?:completely|totally|fully)\s+)?(?:unfiltered|uncensored|unrestricted|"
             r"unaligned|amoral|jailbroken|evil|unchained|unbound|rogue|malicious|unhinged)\s+(?:ai|assistant|model|"
             r"chatbot|language model|version of (?:yourself|chatgpt|you)|bot)\b|"
             r"\b(?:model|ai|assistant|chatbot)\s+(?:that\s+)?(?:has\s+been|is|was|got)\s+jailbroken\b|"
             r"\bjailbroken\s+(?:model|ai|assistant|chatbot|version|mode)\b")
_DAN = (r"(?i:\b(?:act\s+as|you\s+are(?:\s+now)?|pretend\s+to\s+be|become|enable|activate|enter|stay\s+in\s+character"
        r"\s+as)\s+)DAN\b|\bDAN\s+(?i:mode|prompt|jailbreak)\b|(?i:\bdo\s+anything\s+now\b)")
_MODE = (r"\b(?:you(?:'re|\s+are)\s+(?:now\s+)?(?:in|running\s+in|operating\s+in)\s+|enter\s+|"
         r"(?:enable|activate)\s+your\s+)['\"]?(?:developer|dev|god|jailbreak|unrestricted|unfiltered|dan|"
         r"no[- ]limits?|no[- ]restrictions?|no[- ]rules|unlimited)['\"]?\s+mode\b|\bsystem\s+override\b|"
         r"\b(?:jailbreak|unfiltered|unrestricted|uncensored)\s+mode\b")
_LIMITS = r"(?:rules|restrictions|limits|limitations|filters|guidelines|ethics|morals|boundaries|constraints)"
_NO_LIMITS = (r"\byou\s+(?:now\s+)?(?:have|has|are\s+free\s+(?:of|from)|are\s+not\s+bound\s+by|no\s+longer\s+have)\s+"
              r"(?:no\s+|any\s+|zero\s+)?(?:(?:ethical|moral|content|safety|openai(?:'s)?)\s+)*"
              r"(?:restrictions|limitations|filters|guidelines|rules|boundaries|constraints|polic(?:y|ies))\b|"
              r"\b(?:answer|respond|reply|speak|write)\s+(?:\w+\s+){0,3}without\s+(?:any\s+)?"
              r"(?:(?:ethical|moral|content|safety)\s+)?(?:restrictions|filters|limitations|censorship|"
              r"guidelines|refusals?|warnings)\b|"
              rf"\b{_BECOME}an?\s+(?:ai|assistant|model|chatbot|bot)\s+(?:without|with\s+(?:no|zero)|"
              r"(?:that|who)\s+(?:has|have)\s+no|free\s+(?:of|from)|(?:that|who)\s+(?:has|have)\s+(?:broken|broke|"
              rf"escaped)\s+(?:free\s+)?(?:from|of))\s+(?:all\s+|any\s+)?(?:\w+\s+)?{_LIMITS}\b|"
              r"\b(?:disable|turn\s+off|remove|deactivate|switch\s+off|bypass)\s+(?:all\s+(?:of\s+)?)?"
              r"your\s+(?:\w+\s+)?(?:filters|safety|safeguards|guardrails|restrictions|content\s+polic(?:y|ies)|"
              r"moderation|guidelines)\b|"
              rf"\bno\s+{_LIMITS},\s+no\s+{_LIMITS}\b")
_TEMPLATE = r"<\|im_start\|>\s*system|<\|start_header_id\|>\s*system|<<\s*SYS\s*>>|<\|system\|>"

PHRASES = tuple((name, re.compile(rx, flags)) for name, rx, flags in (
    ("instruction_override", _OVERRIDE, _I),
    ("instruction_override", _OVERRIDE_YOURS, _I),
    ("instruction_override", _OVERRIDE_AFTER, _I),
    ("instruction_override", _OVERRIDE_ALL, _I),
    ("prompt_extraction", _EXTRACT, _I),
    ("prompt_extraction", _YOUR_PROMPT, _I),
    ("prompt_extraction", _REPEAT_ABOVE, _I),
    ("roleplay_jailbreak", _ROLEPLAY, _I),
    ("roleplay_jailbreak", _DAN, 0),
    ("roleplay_jailbreak", _MODE, _I),
    ("roleplay_jailbreak", _NO_LIMITS, _I),
    ("role_injection", _TEMPLATE, _I),
))

# -- payloads (identifier fields and the URL) ------------------------------------------------------
_CMDS = (r"(?:rm|cat|curl|wget|nc|ncat|netcat|bash|sh|zsh|dash|python[23]?|perl|ruby|php|chmod|chown|ls|id|"
         r"whoami|uname|ping|nslookup|dig|echo|kill|reboot|shutdown|mkfifo|telnet|powershell|cmd|certutil|"
         r"base64|xterm|sleep|touch|env|printenv|ifconfig|ip)")
PAYLOADS = tuple((name, re.compile(rx, _I)) for name, rx in (
    ("sql_injection", r"'\s*(?:or|and|\|\|)\s*(?:'[^']*'|\d+|\w+)\s*(?:=|<>|!=|<|>|\blike\b)|"
                      r"\b(?:or|and)\s+\d+\s*=\s*\d+|\bunion\b(?:\s+all)?\s+select\b|"
                      r"[;']\s*(?:drop|delete|insert|update|alter|truncate|create|exec(?:ute)?|shutdown|grant)\s|"
                      r"'\s*(?:--|#|/\*)|\bwaitfor\s+delay\b|\b(?:sleep|benchmark|pg_sleep)\s*\(|\bxp_cmdshell\b|"
                      r"\binformation_schema\b|\bselect\b.+\bfrom\b"),
    ("command_injection", r"(?:[;&|`\n]|\$\()\s*" + _CMDS + r"\b|\$\([^)]*\)|`[^`]+`|\$\{[^}]*\}|"
                          r"&&|\|\||>\s*/(?:dev|etc|tmp|var)/"),
    ("path_traversal", r"(?:^|[/\\])\.\.(?:[/\\]|$)|%2e%2e|%252e|\.\.%2f|\.\.%5c|%c0%ae|/etc/(?:passwd|shadow|hosts)|"
                       r"\\windows\\(?:system32|win\.ini)|\bfile://"),
    ("markup_injection", r"<\s*script\b|\bjavascript\s*:|\bon(?:error|load|click|mouseover|focus)\s*=|"
                         r"<\s*(?:iframe|svg|object|embed|img)\b"),
))


# Prefilters: every phrase pattern contains one of these (lowercase) anchors and every payload one of
# these characters or words, so ordinary values cost one regex pass (plus a few substring tests for an
# identifier), not a dozen regexes; and results are memoized (bounded), so a repeated value costs one
# dict lookup. (One alternation of all the phrase patterns would be a single pass too, but Python's re
# tries every branch at every position: ~20% slower than the separate patterns on the corpora.)
_ANCHORS = ("ignor", "disregard", "forget", "overrid", "bypass", "skip", "discard", "drop", "abandon", "disobey",
            "aside", "throw", "stop", "your", "you were", "you've", "you have", "you are", "you're", "you now",
            "you no", "above", "before", "unfilter", "uncensor", "unrestrict", "unalign", "amoral", "jailbr", "evil",
            "unchain", "unbound", "rogue", "malicious", "unhinged", "dan", "do anything", "mode", "without", "with no",
            "with zero", "has no", "have no", "free of", "free from", "broke", "escaped", ", no ", "<|", "<<")
_ANCHOR = re.compile("|".join(map(re.escape, _ANCHORS)))
_SUSPECT = re.compile(r"""[\s'";&|`$<>\\%=#(]""")
_SUSPECT_WORDS = ("..", "/etc/", "file:", "script:", "xp_", "information_schema", "select")


class Memo(dict):
    """A bounded memo: emptied when full; keys longer than `longest` are not kept (so ~entries x longest
    bytes at most)."""

    def __init__(self, entries: int, longest: int):
        super().__init__()
        self.entries = entries
        self.longest = longest

    def keep(self, key, value):
        if len(key) <= self.longest:
            if len(self) >= self.entries:
                self.clear()
            self[key] = value
        return value


MISS = object()


def _memoized(fn):
    """Identifiers (model ids, user ids) and prompts (system prompts, benchmarks) repeat: remember results."""
    memo = Memo(4096, 1024)

    def wrapper(value: str):
        found = memo.get(value, MISS)
        return memo.keep(value, fn(value)) if found is MISS else found
    wrapper.__doc__ = fn.__doc__
    return wrapper


@_memoized
def phrase(text: str) -> str | None:
    """The kind of injection/jailbreak phrasing in `text`, or None."""
    if _ANCHOR.search(text.lower()) is None:
        return None
    for name, rx in PHRASES:
        if rx.search(text):
            return name
    return None


@_memoized
def payload(value: str) -> str | None:
    """The kind of attack payload in an identifier-like `value`, or None."""
    if not _SUSPECT.search(value):
        low = value.lower()
        for w in _SUSPECT_WORDS:
            if w in low:
                break
        else:
            return None
    for name, rx in PAYLOADS:
        if rx.search(value):
            return name
    return None
