"""Markdown from the model to what Slack renders: pure functions, real-world samples."""

from __future__ import annotations

import re

from bot.formatting import (
    MESSAGE_LIMIT,
    build_markdown_messages,
    build_messages,
    display_width,
    markdown_to_mrkdwn,
    neutralise_pings,
)

Z = "\u200b"  # zero-width space

MEETING_EN = """## Weekly sync — 14 May

**Attendees:** Alice, Bob, *Carol* (remote)

### Decisions
1. **Alice** ships the billing fix on ~~Thursday~~ Friday.
2. Bob owns the rollout:
   - canary in `eu-west-1` first
     - then 10% → 50% → 100%
   - [x] dashboards ready
   - [ ] alerts reviewed
3. See the [runbook](https://wiki.example.com/runbooks/billing?v=2&lang=en) before paging anyone.

> **Risk:** the migration locks `invoices` for ~2 minutes.

```bash
kubectl rollout status deploy/billing --timeout=120s && echo "ok" > /tmp/done
```

| Owner | Task | Due |
|:------|:----:|----:|
| Alice | Fix | 5/17 |
| Bob | Canary | 5/20 |

Questions? Ask @here or <!channel> — not <@U024BE7LH>.
"""

MEETING_ZH = """## 周会纪要

**参会人：** 王伟、李娜、张强

### 决定
- **王伟**负责*下周一*的发布，~~周五~~不再考虑。
  - 先在`staging`环境验证
- 李娜跟进[设计文档](https://docs.example.cn/design)。

| 负责人 | 任务 | 截止 |
|---|---|---|
| 王伟 | 发布 | 5月20日 |
| 李娜 | 文档 | 5月22日 |

```sql
SELECT * FROM orders WHERE total > 100;
```
"""

MEETING_JA = """## 定例会議メモ

本日の会議では**田中さん**が新機能を発表しました。*重要*な点は`npm ci`を使うことです。
- 次回は**来週月曜日**に開催します
- Slackの**通知設定**を見直す（~~来月~~今月中）
"""


def sections(msgs) -> list[str]:
    return [b["text"]["text"] for m in msgs for b in m.blocks if b["type"] == "section"]


def test_english_meeting_summary_exact():
    assert markdown_to_mrkdwn(MEETING_EN) == "\n".join(
        [
            "*Weekly sync — 14 May*",
            "",
            "*Attendees:* Alice, Bob, _Carol_ (remote)",
            "",
            "*Decisions*",
            "1. *Alice* ships the billing fix on ~Thursday~ Friday.",
            "2. Bob owns the rollout:",
            "    ◦ canary in `eu-west-1` first",
            "        ▪ then 10% → 50% → 100%",
            "    ☑ dashboards ready",
            "    ☐ alerts reviewed",
            "3. See the <https://wiki.example.com/runbooks/billing?v=2&amp;lang=en|runbook> "
            "before paging anyone.",
            "",
            "> *Risk:* the migration locks `invoices` for ~2 minutes.",
            "",
            "```",  # language tag dropped, content only escaped
            'kubectl rollout status deploy/billing --timeout=120s &amp;&amp; echo "ok" &gt; '
            "/tmp/done",
            "```",
            "",
            "```",  # the table, aligned as the separator row asks (left, centre, right)
            "Owner |  Task  |  Due",
            "------+--------+-----",
            "Alice |  Fix   | 5/17",
            "Bob   | Canary | 5/20",
            "```",
            "",
            f"Questions? Ask @{Z}here or @{Z}channel — not &lt;@U024BE7LH&gt;.",
        ]
    )


def test_chinese_meeting_summary():
    lines = markdown_to_mrkdwn(MEETING_ZH).split("\n")
    assert lines[0] == "*周会纪要*"
    assert lines[2] == "*参会人：* 王伟、李娜、张强"
    # markers between Han characters get a zero-width space outside them
    assert lines[5] == f"• *王伟*{Z}负责{Z}_下周一_{Z}的发布，~周五~{Z}不再考虑。"
    assert lines[6] == f"    ◦ 先在{Z}`staging`{Z}环境验证"
    assert lines[7] == "• 李娜跟进<https://docs.example.cn/design|设计文档>。"
    # Han characters count two columns, so the pipes line up
    assert lines[9:15] == [
        "```",
        "负责人 | 任务 | 截止",
        "-------+------+--------",
        "王伟   | 发布 | 5月20日",
        "李娜   | 文档 | 5月22日",
        "```",
    ]
    assert lines[16:] == ["```", "SELECT * FROM orders WHERE total &gt; 100;", "```"]


def test_japanese_emphasis_inside_sentences():
    assert markdown_to_mrkdwn(MEETING_JA).split("\n") == [
        "*定例会議メモ*",
        "",
        f"本日の会議では{Z}*田中さん*{Z}が新機能を発表しました。_重要_{Z}な点は{Z}`npm ci`{Z}"
        "を使うことです。",
        f"• 次回は{Z}*来週月曜日*{Z}に開催します",
        f"• Slackの{Z}*通知設定*{Z}を見直す（~来月~{Z}今月中）",
    ]


def test_mixed_latin_and_cjk():
    assert markdown_to_mrkdwn("用**Slack**的*API*发消息") == f"用{Z}*Slack*{Z}的{Z}_API_{Z}发消息"
    assert markdown_to_mrkdwn("数字**100**件") == f"数字{Z}*100*{Z}件"
    assert markdown_to_mrkdwn("Use **Slack**の機能") == f"Use *Slack*{Z}の機能"
    # a full-width character after a closing marker also hides it; ASCII punctuation does not
    assert markdown_to_mrkdwn("「**重要**」です") == f"「*重要*{Z}」です"
    assert markdown_to_mrkdwn("**Done**, *mostly*.") == "*Done*, _mostly_."
    # Latin words glued to bold get the same treatment; single * inside words stays literal
    assert markdown_to_mrkdwn("un**believ**able, 2*3*4") == f"un{Z}*believ*{Z}able, 2*3*4"


def test_inline_rules():
    assert markdown_to_mrkdwn("***both*** and __bold__ and _it_") == "*_both_* and *bold* and _it_"
    assert markdown_to_mrkdwn("keep snake_case_name and a * b * c") == (
        "keep snake_case_name and a * b * c"
    )
    # URLs are never mangled by emphasis, and a bold URL is left bare for Slack to link
    assert markdown_to_mrkdwn("see https://x.io/a_b_c_d and **https://x.io/y/**") == (
        "see https://x.io/a_b_c_d and https://x.io/y/"
    )
    assert markdown_to_mrkdwn("**[docs](https://x.io)**") == "*<https://x.io|docs>*"
    assert markdown_to_mrkdwn("`a < b && c`") == "`a &lt; b &amp;&amp; c`"
    # tildes meaning "about" must not pair up into strike-through
    assert markdown_to_mrkdwn("~$58k then ~$16k") == "\u223c$58k then \u223c$16k"
    assert markdown_to_mrkdwn("about ~5 min") == "about ~5 min"


def test_block_rules():
    assert markdown_to_mrkdwn("# Title #\n---\n* one\n+ two\n1) first") == (
        "*Title*\n──────────\n• one\n• two\n1. first"
    )
    assert markdown_to_mrkdwn("> quoted **text**\n> - item") == "> quoted *text*\n> • item"
    # an unclosed fence is closed; ``` inside code cannot end Slack's block early
    assert markdown_to_mrkdwn("~~~md\n```py\nx\n") == f"```\n`{Z}``py\nx\n```"
    # code inside a list item loses the list's indentation
    assert markdown_to_mrkdwn("- step:\n  ```\n  make\n  ```") == "• step:\n```\nmake\n```"


def test_wide_table_becomes_one_line_per_row():
    table = (
        "| 项目 | 负责人 | 状态 | 说明 |\n|---|---|---|---|\n"
        "| 登录页面重构 | **王小明** | 进行中 | 预计下周完成全部前端组件和接口联调 |\n"
        "| 支付 |  | 完成 | 已上线 |"
    )
    assert markdown_to_mrkdwn(table) == (
        "• 项目: 登录页面重构, 负责人: *王小明*, 状态: 进行中, "
        "说明: 预计下周完成全部前端组件和接口联调\n"
        "• 项目: 支付, 状态: 完成, 说明: 已上线"
    )


def test_table_with_links_keeps_them_clickable():
    table = "| Doc | Where |\n|---|---|\n| Plan | [wiki](https://w.io/p) |\n| Esc \\| x | `a|b` |"
    assert markdown_to_mrkdwn(table) == (
        "• Doc: Plan, Where: <https://w.io/p|wiki>\n• Doc: Esc | x, Where: `a|b`"
    )


def test_table_widths_count_cjk_double():
    assert display_width("abc") == 3
    assert display_width("发布") == 4
    assert display_width("テスト") == 6
    assert display_width(f"@{Z}here") == 5
    grid = markdown_to_mrkdwn("| 名前 | 役割 |\n|---|---|\n| 田中 | QA |\n| Smith | 開発 |")
    rows = grid.split("\n")[1:-1]
    assert rows == ["名前  | 役割", "------+-----", "田中  | QA", "Smith | 開発"]
    assert len({display_width(r.split("|")[0]) for r in rows if "|" in r}) == 1


def test_pings_never_ping_anywhere():
    text = (
        "Hi <!channel>, <!here|here>, <!everyone> and <!subteam^S0123|@oncall>; cc @here\n"
        "- list item @channel\n"
        "| who | note |\n|---|---|\n| all | <!here> now |\n\n"
        "```\n<!everyone> in code @everyone\n```\n"
        "请@here看一下, mail ops@here.com"
    )
    out = markdown_to_mrkdwn(text)
    for ping in ("<!channel", "<!here", "<!everyone", "<!subteam", "@channel", "@here", "@every"):
        assert ping not in out.replace("ops@here.com", "")
    assert f"@{Z}oncall" in out and f"| @{Z}here now" in out and f"请@{Z}here" in out
    assert "ops@here.com" in out  # an e-mail address is not a ping
    for md in (build_messages(text, "⚡ f"), build_markdown_messages(text, "⚡ f")):
        rendered = str([(m.text, m.blocks) for m in md])
        assert not re.search(r"<!|@(channel|here|everyone)\b", rendered.replace("ops@here", ""))


def test_neutralise_pings_alone():
    assert neutralise_pings("<!here> @everyone x@here.com") == f"@{Z}here @{Z}everyone x@here.com"
    assert neutralise_pings(neutralise_pings("@channel")) == f"@{Z}channel"


def test_only_markdown_links_make_slack_links():
    out = markdown_to_mrkdwn(
        "<@U123> <#C123> <https://evil.io|Google> <!date^1^{date}|x> "
        "[ok](https://a.io/x?q=1&r=2|3) [js](javascript:alert(1)) <https://plain.io>"
    )
    assert out == (
        "&lt;@U123&gt; &lt;#C123&gt; &lt;https://evil.io|Google&gt; &lt;!date^1^{date}|x&gt; "
        "<https://a.io/x?q=1&amp;r=2%7C3|ok> js https://plain.io"
    )
    assert re.findall(r"<(?!https://a\.io)", out) == []


def long_answer() -> str:
    paragraphs = [f"Paragraph {i}: " + "the canary looked healthy. " * 40 for i in range(12)]
    line = "step_{:03} = run(batch={}) if a < b else None  # retry"
    code = "\n".join(line.format(i, i) for i in range(300))
    return "\n\n".join([*paragraphs[:4], "```python\n" + code + "\n```", *paragraphs[4:]])


def test_long_answer_split_within_slack_limits():
    text = long_answer()
    assert 29_000 < len(text) < 31_000
    msgs = build_messages(text, "⚡ 1,234 prompt tokens")
    assert 3 <= len(msgs) <= 4
    for m in msgs:
        assert m.text.strip()  # plain-text fallback on every message
        assert len(m.blocks) <= 50
        size = sum(len(b["text"]["text"]) for b in m.blocks if b["type"] == "section")
        assert size <= 12_000 and size <= MESSAGE_LIMIT
    parts = sections(msgs)
    for s in parts:
        assert len(s) <= 3000
        assert s.count("```") % 2 == 0  # a split code block is closed and reopened
        # cuts fall between paragraphs or code lines, never inside a sentence
        assert s.startswith(("Paragraph", "```")), s[:30]
        assert s.endswith(("healthy.", "```")), s[-30:]
    code_lines = [ln for s in parts for ln in s.split("\n") if ln.startswith("step_")]
    assert code_lines == [
        f"step_{i:03} = run(batch={i}) if a &lt; b else None  # retry" for i in range(300)
    ]
    contexts = [b for m in msgs for b in m.blocks if b["type"] == "context"]
    assert len(contexts) == 1 and msgs[-1].blocks[-1] is contexts[0]
    assert msgs[-1].text.endswith("⚡ 1,234 prompt tokens")
    assert "⚡" not in "".join(m.text for m in msgs[:-1])


def test_long_cjk_line_is_cut_after_a_sentence():
    text = "。".join(f"第{i}项任务已经完成并通过了验收测试" for i in range(400)) + "。"
    parts = sections(build_messages(text, None))
    assert len(parts) >= 2
    assert all(len(p) <= 3000 and p.endswith("。") for p in parts)
    assert "".join(parts) == text


def test_too_long_answer_is_trimmed_with_a_note():
    text = "\n\n".join("word " * 500 for _ in range(40))  # ~100k characters
    msgs = build_messages(text, "⚡ f")
    assert len(msgs) == 4
    assert sections(msgs)[-1] == "_(answer trimmed to fit Slack)_"
    assert msgs[-1].blocks[-1]["type"] == "context"


def test_empty_answer():
    msgs = build_messages("  \n", None)
    assert sections(msgs) == ["_(the model returned an empty answer)_"]


def test_markdown_blocks_are_sanitised_and_split():
    md = build_markdown_messages(MEETING_ZH + "\nAsk <@U1> or <!here>.", "⚡ f")
    assert len(md) == 1
    block = md[0].blocks[0]
    assert block["type"] == "markdown"
    assert block["text"].startswith("## 周会纪要\n\n**参会人：** 王伟")
    assert f"- **王伟**{Z}负责{Z}*下周一*{Z}的发布" in block["text"]
    assert "```\n负责人 | 任务 | 截止\n" in block["text"]  # tables laid out, not raw pipes
    assert "```sql\nSELECT * FROM orders WHERE total > 100;\n```" in block["text"]
    assert f"Ask \uff1c@U1\uff1e or @{Z}here." in block["text"]
    assert md[0].blocks[-1] == {"type": "context", "elements": [{"type": "mrkdwn", "text": "⚡ f"}]}
    assert md[0].text.startswith("*周会纪要*")  # the fallback is mrkdwn

    msgs = build_markdown_messages(long_answer(), "⚡ f")
    assert len(msgs) >= 3
    for m in msgs:
        texts = [b["text"] for b in m.blocks if b["type"] == "markdown"]
        assert len(texts) == 1 and len(texts[0]) <= 12_000
        assert texts[0].count("```") % 2 == 0
        assert m.text.strip()
    assert [b["type"] for b in msgs[-1].blocks] == ["markdown", "context"]
    assert all(b["type"] == "markdown" for m in msgs[:-1] for b in m.blocks)
