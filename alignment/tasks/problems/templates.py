"""Our bilingual (zh/en) math word-problem templates with exact answers and difficulty levels.

Each template is a function ``(rng, level) -> Item`` that draws numbers for difficulty
``level`` (1 = small numbers, one or two steps; 3 = larger numbers, more steps), computes the
answer exactly with ``fractions.Fraction`` and writes a worked solution in both languages,
one step per line, ending with ``#### <answer>``. Non-integer answers are written as
``p/q`` (the math verifier compares them exactly).

Split: 3 of the 12 templates (ranked by sha256) are held out, never used for training.

    python -c "from alignment.tasks.problems import load_problems; [print(p.prompt, p.answer) for p in load_problems('templates', 'train', 4, 0)]"
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from random import Random
from typing import Callable

from alignment.tasks.format import math_solution
from alignment.tasks.problems import Problem, draw_unique, split_by_key

HELDOUT_FRAC = 0.25


@dataclass
class Item:
    en: str
    zh: str
    answer: Fraction
    steps_en: list[str]
    steps_zh: list[str]


def fmt(x: Fraction | int) -> str:
    x = Fraction(x)
    return str(x.numerator) if x.denominator == 1 else f"{x.numerator}/{x.denominator}"


def _scale(level: int, lo: int, hi: int) -> tuple[int, int]:
    return lo * level, hi * level * level


def shopping(rng: Random, level: int) -> Item:
    a, b = rng.randint(*_scale(level, 2, 6)), rng.randint(*_scale(level, 1, 5))
    p, q = rng.randint(2, 5 * level + 3), rng.randint(2, 5 * level + 3)
    cost = a * p + b * q
    bill = (cost // 50 + 1) * 50
    return Item(
        f"Mia buys {a} notebooks at {p} dollars each and {b} pens at {q} dollars each. She pays with {bill} dollars. How much change does she get?",
        f"小米买了{a}本笔记本，每本{p}元，又买了{b}支笔，每支{q}元。她付了{bill}元，应找回多少元？",
        Fraction(bill - cost),
        [f"Notebooks cost {a} * {p} = {a * p} dollars.", f"Pens cost {b} * {q} = {b * q} dollars.",
         f"Total cost is {a * p} + {b * q} = {cost} dollars.", f"Change is {bill} - {cost} = {bill - cost} dollars."],
        [f"笔记本花费 {a} * {p} = {a * p} 元。", f"笔花费 {b} * {q} = {b * q} 元。",
         f"共花费 {a * p} + {b * q} = {cost} 元。", f"找回 {bill} - {cost} = {bill - cost} 元。"],
    )


def speed(rng: Random, level: int) -> Item:
    t = rng.randint(2, 3 + level)
    v = rng.randint(*_scale(level, 20, 30))
    d = v * t
    t2 = rng.randint(1, 4 * level)
    return Item(
        f"A train travels {d} km in {t} hours at a constant speed. How many km does it travel in {t2} hours?",
        f"一列火车匀速行驶，{t}小时行驶了{d}千米。{t2}小时行驶多少千米？",
        Fraction(v * t2),
        [f"Speed is {d} / {t} = {v} km per hour.", f"In {t2} hours it travels {v} * {t2} = {v * t2} km."],
        [f"速度是 {d} / {t} = {v} 千米每小时。", f"{t2}小时行驶 {v} * {t2} = {v * t2} 千米。"],
    )


def class_fraction(rng: Random, level: int) -> Item:
    den = rng.choice([3, 4, 5, 6, 8][: 2 + level])
    num = rng.randint(1, den - 1)
    n = den * rng.randint(2, 4 * level + 2)
    girls = n * num // den
    return Item(
        f"A class has {n} students and {num}/{den} of them are girls. How many boys are in the class?",
        f"一个班有{n}名学生，其中{num}/{den}是女生。班里有多少名男生？",
        Fraction(n - girls),
        [f"Girls: {n} * {num} / {den} = {girls}.", f"Boys: {n} - {girls} = {n - girls}."],
        [f"女生有 {n} * {num} / {den} = {girls} 人。", f"男生有 {n} - {girls} = {n - girls} 人。"],
    )


def discount(rng: Random, level: int) -> Item:
    price = rng.randint(*_scale(level, 20, 40)) * 5
    r = rng.choice([10, 15, 20, 25, 30, 40])
    k = rng.randint(1, 2 * level)
    unit = Fraction(price * (100 - r), 100)
    return Item(
        f"A jacket costs {price} dollars. It is sold at {r}% off. How much do {k} jackets cost after the discount?",
        f"一件夹克原价{price}元，现降价{r}%出售。买{k}件打折后一共多少元？",
        unit * k,
        [f"One jacket costs {price} * (100 - {r}) / 100 = {fmt(unit)} dollars.", f"{k} jackets cost {fmt(unit)} * {k} = {fmt(unit * k)} dollars."],
        [f"一件价格 {price} * (100 - {r}) / 100 = {fmt(unit)} 元。", f"{k}件共 {fmt(unit)} * {k} = {fmt(unit * k)} 元。"],
    )


def work_rate(rng: Random, level: int) -> Item:
    a, b = rng.randint(2, 4 + 2 * level), rng.randint(2, 4 + 2 * level)
    together = Fraction(a * b, a + b)
    return Item(
        f"Tom can paint a fence in {a} hours and Jerry can paint it in {b} hours. How many hours do they need working together?",
        f"汤姆单独刷完篱笆要{a}小时，杰瑞单独刷完要{b}小时。两人合作需要多少小时？",
        together,
        [f"Together they paint 1/{a} + 1/{b} = {fmt(Fraction(1, a) + Fraction(1, b))} of the fence per hour.", f"Time is 1 / {fmt(Fraction(1, a) + Fraction(1, b))} = {fmt(together)} hours."],
        [f"合作每小时完成 1/{a} + 1/{b} = {fmt(Fraction(1, a) + Fraction(1, b))}。", f"需要 1 / {fmt(Fraction(1, a) + Fraction(1, b))} = {fmt(together)} 小时。"],
    )


def ages(rng: Random, level: int) -> Item:
    y = rng.randint(3, 6 + 4 * level)
    k = rng.randint(2, 2 + level)
    n = rng.randint(1, 5 * level)
    x = k * y
    s = x + y + 2 * n
    return Item(
        f"Lily is {y} years old. Her father is {k} times as old as she is. What will the sum of their ages be in {n} years?",
        f"莉莉今年{y}岁，爸爸的年龄是她的{k}倍。{n}年后两人年龄之和是多少岁？",
        Fraction(s),
        [f"Father is {k} * {y} = {x} years old.", f"Now the sum is {x} + {y} = {x + y}.", f"In {n} years the sum is {x + y} + 2 * {n} = {s}."],
        [f"爸爸今年 {k} * {y} = {x} 岁。", f"现在年龄和是 {x} + {y} = {x + y} 岁。", f"{n}年后年龄和是 {x + y} + 2 * {n} = {s} 岁。"],
    )


def rectangle(rng: Random, level: int) -> Item:
    w = rng.randint(*_scale(level, 2, 5))
    length = w + rng.randint(1, 5 * level)
    per = 2 * (w + length)
    return Item(
        f"A rectangle has a perimeter of {per} cm and a width of {w} cm. What is its area in square cm?",
        f"一个长方形的周长是{per}厘米，宽是{w}厘米。它的面积是多少平方厘米？",
        Fraction(w * length),
        [f"Length is {per} / 2 - {w} = {length} cm.", f"Area is {length} * {w} = {w * length} square cm."],
        [f"长是 {per} / 2 - {w} = {length} 厘米。", f"面积是 {length} * {w} = {w * length} 平方厘米。"],
    )


def arithmetic_series(rng: Random, level: int) -> Item:
    a1, d = rng.randint(1, 5 * level), rng.randint(1, 3 * level)
    n = rng.randint(3, 4 + 3 * level)
    an = a1 + (n - 1) * d
    s = n * (a1 + an) // 2 if (n * (a1 + an)) % 2 == 0 else Fraction(n * (a1 + an), 2)
    return Item(
        f"Sam saves {a1} coins on day 1 and each day saves {d} more coins than the day before. How many coins has he saved after {n} days?",
        f"小山第一天存{a1}枚硬币，以后每天比前一天多存{d}枚。{n}天后他一共存了多少枚？",
        Fraction(s),
        [f"On day {n} he saves {a1} + ({n} - 1) * {d} = {an} coins.", f"Total is {n} * ({a1} + {an}) / 2 = {fmt(Fraction(s))} coins."],
        [f"第{n}天存 {a1} + ({n} - 1) * {d} = {an} 枚。", f"一共 {n} * ({a1} + {an}) / 2 = {fmt(Fraction(s))} 枚。"],
    )


def average_missing(rng: Random, level: int) -> Item:
    k = rng.randint(2, 2 + level)
    scores = [rng.randint(60, 95) for _ in range(k)]
    target = rng.randint(70, 90)
    need = target * (k + 1) - sum(scores)
    listing = ", ".join(map(str, scores))
    return Item(
        f"Anna's first {k} test scores are {listing}. What score does she need on the next test to average {target} over all {k + 1} tests?",
        f"安娜前{k}次测验成绩是{listing}。要使{k + 1}次的平均分为{target}，下一次要考多少分？",
        Fraction(need),
        [f"Needed total is {target} * {k + 1} = {target * (k + 1)}.", f"Current total is {' + '.join(map(str, scores))} = {sum(scores)}.", f"She needs {target * (k + 1)} - {sum(scores)} = {need}."],
        [f"总分需要 {target} * {k + 1} = {target * (k + 1)}。", f"已有总分 {' + '.join(map(str, scores))} = {sum(scores)}。", f"还需 {target * (k + 1)} - {sum(scores)} = {need} 分。"],
    )


def recipe_scale(rng: Random, level: int) -> Item:
    cups, serv = rng.randint(2, 3 + level), rng.randint(3, 4 + 2 * level)
    want = rng.randint(2, 6 * level)
    ans = Fraction(cups * want, serv)
    return Item(
        f"A recipe uses {cups} cups of flour for {serv} servings. How many cups of flour are needed for {want} servings?",
        f"一个食谱做{serv}份需要{cups}杯面粉。做{want}份需要多少杯面粉？",
        ans,
        [f"Flour per serving is {cups} / {serv} = {fmt(Fraction(cups, serv))} cups.", f"For {want} servings: {fmt(Fraction(cups, serv))} * {want} = {fmt(ans)} cups."],
        [f"每份需要 {cups} / {serv} = {fmt(Fraction(cups, serv))} 杯。", f"{want}份需要 {fmt(Fraction(cups, serv))} * {want} = {fmt(ans)} 杯。"],
    )


def savings_weeks(rng: Random, level: int) -> Item:
    start, per = rng.randint(0, 20 * level), rng.randint(5, 10 * level)
    target = start + per * rng.randint(2, 5 * level) + rng.randint(0, per - 1)
    weeks = -(-(target - start) // per)
    return Item(
        f"Ben has {start} dollars and saves {per} dollars every week. How many weeks until he has at least {target} dollars?",
        f"小本现有{start}元，每周存{per}元。至少要多少周才能有{target}元或更多？",
        Fraction(weeks),
        [f"He still needs {target} - {start} = {target - start} dollars.", f"{target - start} / {per} rounded up is {weeks} weeks."],
        [f"还差 {target} - {start} = {target - start} 元。", f"{target - start} / {per} 向上取整是 {weeks} 周。"],
    )


def chickens_rabbits(rng: Random, level: int) -> Item:
    c, r = rng.randint(1, 8 * level), rng.randint(1, 8 * level)
    heads, legs = c + r, 2 * c + 4 * r
    return Item(
        f"A farm has chickens and rabbits with {heads} heads and {legs} legs in total. How many rabbits are there?",
        f"鸡兔同笼，共有{heads}个头，{legs}条腿。兔子有多少只？",
        Fraction(r),
        [f"If all were chickens there would be 2 * {heads} = {2 * heads} legs.", f"Extra legs: {legs} - {2 * heads} = {legs - 2 * heads}.", f"Each rabbit adds 2 legs, so rabbits = {legs - 2 * heads} / 2 = {r}."],
        [f"假设全是鸡，有 2 * {heads} = {2 * heads} 条腿。", f"多出 {legs} - {2 * heads} = {legs - 2 * heads} 条腿。", f"每只兔多2条腿，兔子有 {legs - 2 * heads} / 2 = {r} 只。"],
    )


TEMPLATES: dict[str, Callable[[Random, int], Item]] = {
    f.__name__: f
    for f in (shopping, speed, class_fraction, discount, work_rate, ages, rectangle, arithmetic_series,
              average_missing, recipe_scale, savings_weeks, chickens_rabbits)
}


def template_split() -> tuple[list[str], list[str]]:
    """(train template names, held-out template names)."""
    return split_by_key(list(TEMPLATES), HELDOUT_FRAC, salt="synth-templates")


def load_templates(split: str, n: int | None, seed: int, lang: str = "mixed", levels: tuple[int, ...] = (1, 2, 3)) -> list[Problem]:
    """``n`` problems; ``lang`` is ``en``, ``zh`` or ``mixed`` (a seeded coin per problem)."""
    if n is None:
        raise ValueError("templates are procedural: pass n")
    if lang not in ("en", "zh", "mixed"):
        raise ValueError(f"lang must be en, zh or mixed, got {lang!r}")
    train, held = template_split()
    names = held if split == "heldout" else train

    def draw(i: int) -> tuple[str, Problem]:
        rng = Random(f"templates:{split}:{seed}:{i}")
        name = rng.choice(names)
        level = rng.choice(list(levels))
        use = rng.choice(["en", "zh"]) if lang == "mixed" else lang
        item = TEMPLATES[name](rng, level)
        steps = item.steps_en if use == "en" else item.steps_zh
        problem = Problem(
            id=f"templates/{name}/s{seed}/{i}",
            kind="math",
            prompt=item.en if use == "en" else item.zh,
            answer=fmt(item.answer),
            difficulty=float(level),
            source="templates",
            meta={"template": name, "split": split, "lang": use, "reference": math_solution(steps, fmt(item.answer))},
        )
        # the instance is the template and its numbers, whatever the language it is shown in
        return f"{name}:{item.en}", problem

    return draw_unique("templates", split, n, draw)
