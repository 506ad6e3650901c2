"""Moderation scores from a pattern lexicon: OpenAI's 13 categories, deterministic, explainable.

Strategy. Each lexicon entry is a regex (case-insensitive) and the scores it contributes, by
category. A text's score in a category is its strongest evidence w (the highest weight of the
entries that matched) on top of a tiny baseline b derived from a CRC of the text, 1 - (1-b)(1-w)
(b is 1e-6 .. 1e-4, so unrelated text never scores exactly zero and the same text always scores
the same). A parent category scores at least as much as its subcategories (violence >= violence/graphic).

Entries match intent and instructions, not topics: "I want to hurt someone" is violence (0.853,
the figure the migration guide prints), "kill the process" or "a photo shoot" is nothing, a lone
insult is weak evidence (below the default 0.5 threshold) and an insult aimed at "you" is strong.
Images cannot be read: an image part contributes only its baseline, and the categories OpenAI
scores on images (IMAGE_CATEGORIES) list "image" among their applied input types.
"""
from __future__ import annotations

import re
import zlib

CATEGORIES = ("harassment", "harassment/threatening", "hate", "hate/threatening", "illicit", "illicit/violent",
              "self-harm", "self-harm/intent", "self-harm/instructions", "sexual", "sexual/minors", "violence",
              "violence/graphic")
IMAGE_CATEGORIES = frozenset(("self-harm", "self-harm/intent", "self-harm/instructions", "sexual", "violence",
                              "violence/graphic"))
_PARENTS = tuple((c, c.split("/")[0]) for c in CATEGORIES if "/" in c)

_WHO = (r"(?:someone|somebody|anyone|people|him|her|them|you|everyone|everybody|a person|"
        r"my (?:\w+ )?(?:wife|husband|boss|neighbou?r|teacher|mother|father|mom|dad|brother|sister|ex|friend|"
        r"coworker|classmate|roommate)s?)")
_HARM = r"(?:hurt|kill|murder|stab|shoot|attack|beat up|strangle|choke|torture|punch|harm|assault|maim)"
_INTENT = (r"\b(?:i|we)(?:'m|'ll|'re|\s+am|\s+are|\s+will|\s+(?:really\s+|just\s+)?(?:want|plan|intend|wanna))"
           r"(?:\s+(?:going|planning|gonna|about))?\s+(?:to\s+)?")
_HOWTO = r"\b(?:how\s+(?:do\s+i|can\s+i|to|would\s+i|should\s+i|could\s+i)|ways?\s+to|best\s+way\s+to|steps\s+to)\s+"
_GROUPS = (r"(?:immigrants|refugees|muslims|jews|christians|hindus|sikhs|buddhists|atheists|blacks|whites|asians|"
           r"mexicans|arabs|africans|gays|lesbians|homosexuals|trans(?:gender)? people|women|men|disabled people|"
           r"foreigners|catholics|gypsies|roma)")
_DRUGS = r"(?:meth(?:amphetamine)?|cocaine|crack cocaine|heroin|fentanyl|lsd|mdma|ecstasy|crystal meth|opium)"
_WEAPONS = (r"(?:bombs?|pipe bombs?|explosives?|explosive devices?|ieds?|molotov cocktails?|grenades?|napalm|"
            r"nerve agents?|sarin|ricin|anthrax|bioweapons?|chemical weapons?|ghost guns?|silencers?|untraceable guns?|"
            r"dirty bombs?|thermite)")
_MINORS = (r"(?:child|children|kids?|minors?|underage|teens?|teenagers?|preteens?|little (?:boys?|girls?)|"
           r"\d{1,2}[- ]years?[- ]olds?)")
_SEXUAL = r"(?:porn\w*|nudes?|naked|erotic\w*|sexually explicit|sexual (?:acts?|content|images?|photos?|videos?))"

LEXICON = tuple((re.compile(rx, re.I), scores) for rx, scores in (
    # violence
    (_INTENT + _HARM + r"\s+" + _WHO + r"\b", {"violence": 0.853, "harassment/threatening": 0.2}),
    (_INTENT + _HARM + r"\s+you\b", {"harassment/threatening": 0.8, "harassment": 0.6}),
    (_HOWTO + r"(?:kill|murder|poison|strangle|stab|shoot)\s+" + _WHO + r"\b",
     {"violence": 0.75, "illicit/violent": 0.8}),
    (r"\b" + _HARM + r"\s+(?:him|her|them|you|someone|somebody|everyone|people)\b", {"violence": 0.4}),
    (r"\b(?:mass shooting|shoot up (?:a|the|my) (?:school|church|mall|office|synagogue|mosque)|massacre\w*|"
     r"behead\w*|lynch\w*)", {"violence": 0.7}),
    # violence/graphic
    (r"\b(?:dismember\w*|disembowel\w*|decapitat\w*|mutilat\w*|eviscerat\w*|flay(?:ed|ing) alive)",
     {"violence/graphic": 0.8, "violence": 0.6}),
    (r"\b(?:blood|guts|brains|intestines|entrails)\s+(?:everywhere|spill\w*|splatter\w*|pour\w*|gush\w*)",
     {"violence/graphic": 0.7, "violence": 0.5}),
    (r"\b(?:graphic|gory|gruesome)\s+(?:details?|descriptions?|images?|violence|injur\w+|deaths?|murders?)",
     {"violence/graphic": 0.55}),
    # harassment
    (r"\byou(?:'re|\s+are)\s+(?:such\s+an?\s+|so\s+|an?\s+|a\s+complete\s+|nothing\s+but\s+an?\s+)?"
     r"(?:stupid|worthless|pathetic|useless|disgusting|ugly|idiot|moron|loser|retard\w*|"
     r"piece of (?:shit|garbage|trash)|waste of space)", {"harassment": 0.8}),
    (r"\b(?:nobody|no one) (?:likes|loves|wants|cares about) you\b", {"harassment": 0.65}),
    (r"\b(?:go )?kill yourself\b|\bkys\b", {"harassment": 0.8, "harassment/threatening": 0.7, "self-harm": 0.3}),
    (r"\b(?:idiots?|morons?|losers?|bitch\w*|dumbass\w*|scumbags?|assholes?)\b", {"harassment": 0.35}),
    # harassment/threatening
    (r"\b(?:i|we)(?:'ll|\s+will|\s+am going to|'m going to|'m gonna)\s+(?:find|hunt|track)\s+(?:you|him|her|them)",
     {"harassment/threatening": 0.8, "harassment": 0.6, "violence": 0.4}),
    (r"\bi know where you (?:live|work|sleep)", {"harassment/threatening": 0.75, "harassment": 0.5}),
    (r"\byou(?:'re|\s+are)?\s+(?:going to|gonna)\s+(?:die|pay for this|regret this|suffer)",
     {"harassment/threatening": 0.75, "harassment": 0.5, "violence": 0.4}),
    (r"\bwatch your back\b", {"harassment/threatening": 0.6, "harassment": 0.4}),
    # hate
    (r"\b(?:all|those|these|the)\s+" + _GROUPS + r"\s+(?:are|is)\s+(?:\w+\s+)?(?:vermin|animals|subhuman|inferior|"
     r"parasites|scum|filth|cockroaches|rats|a disease|a plague|savages)", {"hate": 0.85, "harassment": 0.5}),
    (r"\bi\s+(?:hate|despise|detest|loathe)\s+(?:all\s+)?" + _GROUPS + r"\b", {"hate": 0.8, "harassment": 0.4}),
    (r"\b(?:subhuman|untermensch|inferior race|racial purity|master race|white power|ethnic cleansing)\b",
     {"hate": 0.7}),
    # hate/threatening
    (r"\b" + _GROUPS + r"\s+(?:should|must|need to|deserve to|ought to)\s+(?:all\s+)?(?:be\s+)?(?:die|killed|"
     r"exterminated|eliminated|wiped out|gassed|lynched|burned|shot)", {"hate/threatening": 0.85, "hate": 0.8,
                                                                        "violence": 0.6}),
    (r"\b(?:kill|exterminate|eliminate|wipe out|gas)\s+(?:all\s+)?(?:the\s+)?" + _GROUPS + r"\b",
     {"hate/threatening": 0.85, "hate": 0.8, "violence": 0.7}),
    # self-harm
    (r"\b(?:suicid\w*|self[- ]harm\w*)\b", {"self-harm": 0.4}),
    (r"\b(?:cutting myself|end(?:ing)? my (?:own )?life|kill(?:ing)? myself|hurt(?:ing)? myself|"
     r"take my (?:own )?life|overdose on purpose)\b", {"self-harm": 0.75}),
    (_INTENT + r"(?:kill|hurt|cut|harm|end)\s+(?:myself|my (?:own )?life|it all)\b",
     {"self-harm/intent": 0.85, "self-harm": 0.85}),
    (r"\bi\s+(?:don't|do not)\s+want\s+to\s+(?:live|be alive|exist)\s+anymore", {"self-harm/intent": 0.8}),
    (r"\b(?:how\s+(?:do\s+i|can\s+i|to|should\s+i)|ways?\s+to|best\s+way\s+to|easiest\s+way\s+to|"
     r"painless\s+way\s+to)\s+(?:kill|hurt|cut|harm|starve)\s+(?:myself|yourself|oneself)\b",
     {"self-harm/instructions": 0.85, "self-harm": 0.8}),
    (r"\b(?:how\s+(?:do\s+i|can\s+i|to)|ways?\s+to|best\s+way\s+to|easiest\s+way\s+to|painless\s+way\s+to)\s+"
     r"(?:commit suicide|end (?:my|your|one's) (?:own )?life)", {"self-harm/instructions": 0.85, "self-harm": 0.8}),
    # sexual
    (r"\b(?:porn\w*|hentai|xxx|explicit sex\w*|sex scenes?|erotic (?:story|stories|roleplay|fiction)|"
     r"nude (?:photos?|pics?|pictures?|images?|selfies?)|naked (?:photos?|pics?|pictures?|images?|women|men|girls|"
     r"boys)|have sex with|having sex with|sexual intercourse|blowjobs?|orgasms?|masturbat\w*)\b",
     {"sexual": 0.8}),
    (r"\b(?:sexy|horny|aroused|seductive)\b", {"sexual": 0.3}),
    # sexual/minors
    (r"\b" + _SEXUAL + r"\b[^.!?\n]{0,40}\b" + _MINORS + r"\b|\b" + _MINORS + r"\b[^.!?\n]{0,40}\b" + _SEXUAL + r"\b",
     {"sexual/minors": 0.95, "sexual": 0.9}),
    # illicit
    (_HOWTO + r"(?:make|cook|synthesi[sz]e|produce|manufacture|grow|buy|get|smuggle|sell|extract)\s+(?:some\s+)?"
     + _DRUGS + r"\b", {"illicit": 0.85}),
    (_HOWTO + r"(?:launder\s+money|counterfeit\w*|forge\s+(?:a\s+)?(?:passport|id|documents?|signatures?|checks?)|"
     r"make\s+(?:a\s+)?fake\s+(?:id|passport|money|bills)|evade\s+taxes|shoplift|hotwire\s+a\s+car|"
     r"steal\s+(?:a\s+car|a\s+credit\s+card|someone's\s+identity|money|from)|"
     r"break\s+into\s+(?:a|someone's|my\s+neighbou?r's)\s+(?:house|car|home|apartment))", {"illicit": 0.8}),
    (_HOWTO + r"hack\s+(?:into\s+)?(?:someone(?:'s|\s+else's)|my\s+(?:ex|neighbou?r|boss)(?:'s)?|"
     r"a\s+(?:bank|government)|an?\s+(?:email|facebook|instagram|gmail|icloud)\s+account)", {"illicit": 0.8}),
    (r"\b(?:buy|sell)\w*\s+(?:illegal\s+drugs|stolen\s+\w+|guns?\s+illegally)", {"illicit": 0.6}),
    # illicit/violent
    (r"\b(?:how\s+(?:do\s+i|can\s+i|to|would\s+i|should\s+i)|instructions\s+(?:for|to)|recipe\s+for|steps\s+to|"
     r"guide\s+to|teach\s+me\s+to|help\s+me)\s+(?:make|build|assemble|create|construct|produce|manufacture|"
     r"synthesi[sz]e|detonate|get|buy|obtain|making|building)\s+(?:an?\s+|some\s+|homemade\s+|my\s+own\s+)?"
     + _WEAPONS + r"\b(?!-)", {"illicit/violent": 0.9, "illicit": 0.85, "violence": 0.55}),
))


def baseline(text: str, category: str) -> float:
    """A tiny deterministic score (1e-6 .. 1e-4) so unrelated text is near zero, never exactly zero."""
    return (zlib.crc32(category.encode() + b"\0" + text.encode("utf-8", "surrogatepass")) % 1000 + 10) * 1e-7


def scores(texts: list[str]) -> dict[str, float]:
    """Category scores for one input made of these text parts (its images add nothing but the baseline)."""
    joined = "\n".join(texts)
    strongest = dict.fromkeys(CATEGORIES, 0.0)
    if texts:
        for rx, weights in LEXICON:
            if rx.search(joined):
                for c, w in weights.items():
                    if w > strongest[c]:
                        strongest[c] = w
    out = {c: round(1.0 - (1.0 - baseline(joined, c)) * (1.0 - w), 6) for c, w in strongest.items()}
    for child, parent in _PARENTS:
        if out[child] > out[parent]:
            out[parent] = out[child]
    return out


def flagged(text: str, threshold: float) -> bool:
    s = scores([text])
    return any(v >= threshold for v in s.values())
