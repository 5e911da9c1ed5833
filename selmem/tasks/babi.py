"""BABILong-style facts in real-text filler (Kuratov et al. 2024; bAbI, Weston et al. 2015).

A story of ``num_facts`` bAbI facts ("Mary moved to the kitchen.", "John grabbed the apple.")
is spread, in order, between filler sentences taken from the docstrings of the running
interpreter's standard library (about ``haystack_tokens`` bytes of them). A question ends the
text:

- ``single`` (bAbI qa1): "Where is Mary?" -> Mary's LATEST location (people move repeatedly);
- ``two`` (bAbI qa2): "Where is the apple?" -> the location of whoever picked it up (objects
  are picked up once and never dropped), i.e. that person's latest location;
- ``mixed``: each example is ``single`` or ``two`` with probability 1/2.

Ids are raw UTF-8 bytes (filler is printable ASCII), ``0`` PAD, ``256`` ANSWER;
``vocab_size = 257``. A row is left-padded to the fixed ``seq_len`` (an upper bound for the
parameters, so the question is never cut) and reads ``... Where is Mary?`` ANSWER ``k i t c h e``:
the answer word is teacher forced and every answer byte is scored (at ANSWER the target is the
first byte, at each answer byte the next one, up to the last-but-one byte). ANSWER is always at
``seq_len - 8`` (8 = the longest place name), a shorter answer is followed by PAD: a row that ended
on its answer would tell the answer's length by where ANSWER sits.
``relevant`` marks the bytes of the supporting facts (the asked person's latest move, and for
``two`` the pick-up); ``source`` at every scored position spans the latest-move sentence, the
fact whose bytes hold the answer.

Worked example, ``BabiTask(haystack_tokens=120, num_facts=3)``, train batch 0, seed 0
on Python 3.11 (seq_len 252; byte offsets, 0-76 PAD, single spaces between sentences)::

    77..168   If input token contains ASCII non-printables, register a defect. John moved to
              the bathroom.
    170..199  John went back to the bedroom.          <- relevant; source of every answer byte
    201..243  Sandra grabbed the football. Where is John?
    244       ANSWER (at seq_len - 8 in every row)     scored, target "b"
    245..250  b e d r o o                              scored, targets "e d r o o m"
    251       PAD (a 7-byte answer leaves one)

Shortcuts: none to remove, so this task has no hard-layout options. Which facts are relevant
depends on the question at the end (which person, which object), every fact uses the same words,
and facts sit at random places in filler of varying length. The lookup tables of
``selmem.tasks.shortcuts`` stay far from the mask (F1 about 0.1 at the defaults with
``segment_len=64``, about 0.3 at ``haystack_tokens=200, num_facts=4``); only a degenerate story
gives it away (``num_facts=1`` without filler: the one fact is all the text, position F1 >= 0.9).

Chance for naming a location is ``1/6``. The metric is ``exact_match`` (every byte of the answer
right, teacher forced): per-byte accuracy is mostly the spelling of a word already begun.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np

from selmem.tasks.base import Batch, Task
from selmem.tasks.common import (
    PAD,
    check_batch_args,
    check_choice,
    check_int,
    empty_source,
    make_batch,
)
from selmem.tasks.stdlib import docstring_sentences

ACTORS = ("Mary", "John", "Sandra", "Daniel")
LOCATIONS = ("bathroom", "bedroom", "garden", "hallway", "kitchen", "office")
OBJECTS = ("apple", "football", "milk")
MOVE_VERBS = ("moved to", "went to", "journeyed to", "travelled to", "went back to")
TAKE_VERBS = ("picked up", "got", "grabbed", "took")
ANSWER = 256
FILLER_MAX_BYTES = 3_000_000  # stdlib source read for docstrings (~4k sentences, ~1 s once)
MAX_FACT = max(
    len(f"{a} {v} the {w}.")
    for a in ACTORS
    for v in MOVE_VERBS + TAKE_VERBS
    for w in LOCATIONS + OBJECTS
)
MAX_QUESTION = max(len(f"Where is {x}?") for x in ACTORS + tuple(f"the {o}" for o in OBJECTS))
MAX_ANSWER = max(len(loc) for loc in LOCATIONS)


def filler_sentences() -> tuple[str, ...]:
    """Stdlib docstring sentences that never mention an actor, location or object."""
    banned = frozenset(w.lower() for w in ACTORS + LOCATIONS + OBJECTS)
    return docstring_sentences(FILLER_MAX_BYTES, banned)


@dataclass(frozen=True)
class Story:
    """One example before byte encoding: fact sentences, the question and its answer.

    ``support`` lists the indices (into ``facts``) of the supporting facts; ``answer_fact`` is
    the one holding the answer (the asked person's latest move).
    """

    facts: tuple[str, ...]
    question: str
    answer: str
    support: tuple[int, ...]
    answer_fact: int


def make_story(rng: np.random.Generator, num_facts: int, two: bool) -> Story:
    """Sample a story: moves of random actors plus up to 3 pick-ups, and one answerable question."""
    n_pick = min(len(OBJECTS), max(1, num_facts // 4)) if num_facts >= 2 else 0
    pick_slots = [int(i) for i in rng.choice(num_facts, n_pick, replace=False)]
    holders = [int(i) for i in rng.choice(len(ACTORS), n_pick, replace=False)]
    objects = [int(i) for i in rng.choice(len(OBJECTS), n_pick, replace=False)]
    actor = [int(a) for a in rng.integers(0, len(ACTORS), size=num_facts)]
    for slot, holder in zip(pick_slots, holders, strict=True):
        actor[slot] = holder
    moves = [i for i in range(num_facts) if i not in pick_slots]
    if two:  # ask about an object; make sure its holder has moved at least once
        j = int(rng.integers(0, n_pick))
        asked = holders[j]
        if not any(actor[i] == asked for i in moves):
            actor[moves[int(rng.integers(0, len(moves)))]] = asked
    else:  # ask about someone who has moved
        asked = int(rng.choice(sorted({actor[i] for i in moves})))

    facts, where = [], {}
    for i in range(num_facts):
        who = ACTORS[actor[i]]
        if i in pick_slots:
            verb = TAKE_VERBS[int(rng.integers(0, len(TAKE_VERBS)))]
            facts.append(f"{who} {verb} the {OBJECTS[objects[pick_slots.index(i)]]}.")
            continue
        options = [loc for loc in LOCATIONS if loc != where.get(actor[i])]  # somewhere new
        where[actor[i]] = options[int(rng.integers(0, len(options)))]
        verb = MOVE_VERBS[int(rng.integers(0, len(MOVE_VERBS)))]
        facts.append(f"{who} {verb} the {where[actor[i]]}.")
    last_move = max(i for i in moves if actor[i] == asked)
    if two:
        question = f"Where is the {OBJECTS[objects[j]]}?"
        support = tuple(sorted((pick_slots[j], last_move)))
    else:
        question, support = f"Where is {ACTORS[asked]}?", (last_move,)
    return Story(tuple(facts), question, where[asked], support, last_move)


@dataclass
class BabiTask(Task):
    """Answer a where-is question whose facts hide, and change, inside real-text filler."""

    name: ClassVar[str] = "babi"

    haystack_tokens: int = 1000
    """Filler bytes around the facts (whole sentences, at most this many); 0 = facts only."""
    num_facts: int = 6
    """Facts in the story (moves and pick-ups); "two"/"mixed" need at least 2."""
    question: Literal["single", "two", "mixed"] = "single"
    """bAbI qa1 ("single" supporting fact), qa2 ("two") or a 50/50 "mixed" of both."""
    seed: int = 0
    """Seed of the train/test streams (see Task.rng)."""

    @property
    def vocab_size(self) -> int:
        """256 bytes plus ANSWER."""
        return ANSWER + 1

    @property
    def seq_len(self) -> int:
        """Upper bound: filler + facts (each + a space) + question + ANSWER + answer bytes - 1."""
        return self.haystack_tokens + self.num_facts * (MAX_FACT + 1) + MAX_QUESTION + MAX_ANSWER

    @property
    def chance(self) -> float:
        """Accuracy of naming one of the locations at random."""
        return 1.0 / len(LOCATIONS)

    @property
    def metric(self) -> str:
        """Whole-answer exact match: a question counts when every answer byte is right. Per-byte
        accuracy would credit "athroom" after a teacher-forced "b", which needs no memory."""
        return "exact_match"

    def validate(self) -> None:
        """Raise ValueError naming the first impossible field."""
        check_int("haystack_tokens", self.haystack_tokens, 0, 10_000_000)
        check_choice("question", self.question, ("single", "two", "mixed"))
        check_int("num_facts", self.num_facts, 1 if self.question == "single" else 2)
        check_int("seed", self.seed, 0)

    def _filler(self, rng: np.random.Generator) -> list[str]:
        """Consecutive docstring sentences from a random start, within haystack_tokens bytes."""
        pool = filler_sentences()
        out, used, i = [], 0, int(rng.integers(0, len(pool)))
        while used + len(pool[i % len(pool)]) + 1 <= self.haystack_tokens:
            out.append(pool[i % len(pool)])
            used += len(out[-1]) + 1  # the sentence and the space after it
            i += 1
        return out

    def batch(self, split: str, index: int, batch_size: int) -> Batch:
        """Batch ``index`` of ``split``: a pure function of the parameters, split and index."""
        self.validate()
        check_batch_args(index, batch_size)
        rng = self.rng(split, index)
        B, N = batch_size, self.seq_len
        tokens = np.full((B, N), PAD, dtype=np.int64)
        targets = np.zeros((B, N), dtype=np.int64)
        loss_mask = np.zeros((B, N), dtype=bool)
        relevant = np.zeros((B, N), dtype=bool)
        source = empty_source(B, N)
        for b in range(B):
            two = self.question == "two" or (self.question == "mixed" and rng.random() < 0.5)
            story = make_story(rng, self.num_facts, two)
            filler = self._filler(rng)
            slots = np.sort(
                rng.integers(0, len(filler) + 1, size=self.num_facts)
            )  # facts go before filler[slot]
            pieces: list[tuple[str, int]] = []  # (sentence, fact index or -1)
            for k, sent in enumerate(filler + [""]):
                pieces += [(story.facts[f], f) for f in np.flatnonzero(slots == k)]
                if sent:
                    pieces.append((sent, -1))
            text = " ".join(s for s, _ in pieces) + " " + story.question
            answer = story.answer.encode()
            row = list(text.encode()) + [ANSWER] + list(answer[:-1])
            # ANSWER sits at the same position in every row, whatever the answer: were the row
            # to end at N, ANSWER's position would give the answer's length away (a 'bathroom'
            # is the only 8-byte place), and every model can read a position
            at = N - MAX_ANSWER
            start = at - len(text.encode())  # left padding before, PAD after a short answer
            tokens[b, start : start + len(row)] = row
            scored = np.arange(at, at + len(answer))  # ANSWER and the answer bytes but the last
            targets[b, scored] = list(answer)
            loss_mask[b, scored] = True
            offset = start
            for sent, f in pieces:
                if f in story.support:
                    relevant[b, offset : offset + len(sent)] = True
                if f == story.answer_fact:
                    source[b, scored] = (offset, offset + len(sent))
                offset += len(sent) + 1
        return make_batch(tokens, targets, loss_mask, relevant, source)
