"""PDFs in threads (#19), at the wire: a PDF as a document block read from cache on follow-ups
with no second download; its extracted text when it cannot be a document (over the page limit,
or a relay that refuses documents: answered all the same, and remembered); an encrypted or
damaged PDF named with the reason."""

from __future__ import annotations

import json
import logging

from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from bot.files import read_pdf, unpack_pdf
from bot.store.models import ThreadFile, UsageRecord
from tests.fakes.messages_api import count_tokens
from tests.pdfs import encrypted, pdf
from tests.test_files import bare, texts, thread_with, user_blocks

PAGES = [
    "Spec v2: the export runs nightly at 02:00 UTC.",
    "Budget: 42k EUR for Q3, approved by finance.",
    "Open question: who owns the retry queue?",
]
SPEC = pdf(PAGES)
# The fake's rule (tests/fakes/messages_api.py): per page its text's tokens + 1,600 (a Letter
# page as an image at the vision ceiling).
SPEC_TOKENS = sum(count_tokens(p) + 1600 for p in PAGES)


def documents(model, i: int) -> list[dict]:
    return [b for b in user_blocks(model, i) if b["type"] == "document"]


def test_a_pdf_is_a_document_block_and_a_follow_up_reads_it_from_cache(bot, slack, model):
    parent = thread_with(slack, [{"name": "spec.pdf", "content": SPEC}])
    bot.mention("C1", "what does the spec say about the budget?", thread_ts=parent)
    blocks = user_blocks(model, 0)
    (i,) = [n for n, b in enumerate(blocks) if b["type"] == "document"]
    assert "[file: spec.pdf (PDF)]" in blocks[i - 1]["text"]  # right after its message's line
    assert blocks[i]["source"]["media_type"] == "application/pdf"
    assert len(slack.downloads) == 1
    first = model.usages[0]
    assert first["input_tokens"] + first["cache_creation_input_tokens"] >= SPEC_TOKENS
    assert not any("could not be read" in t for t in texts(model, 0))

    bot.mention("C1", "and who owns the retry queue?", thread_ts=parent)
    assert len(slack.downloads) == 1  # the follow-up downloads nothing
    assert [bare(b) for b in documents(model, 1)] == [bare(blocks[i])]  # the same bytes
    assert model.usages[1]["cache_read_input_tokens"] >= SPEC_TOKENS
    assert model.usages[1]["input_tokens"] < SPEC_TOKENS


def test_a_relay_that_refuses_documents_gets_the_text_and_is_remembered(
    bot, slack, model, engine, caplog
):
    model.accept_documents = False
    model.reply = lambda body: "The budget is 42k." if "42k EUR" in json.dumps(body) else "?"
    parent = thread_with(slack, [{"name": "spec.pdf", "content": SPEC}])
    with caplog.at_level(logging.WARNING, logger="bot.files"):
        bot.mention("C1", "what is the budget?", thread_ts=parent)
    assert [r["status"] for r in model.requests] == [400, 200]  # refused, then sent again
    assert documents(model, 0) and not documents(model, 1)
    (extracted,) = [t for t in texts(model, 1) if t.startswith("[the text extracted from spec")]
    assert "(3 pages): the model endpoint takes no PDFs" in extracted
    assert "[page 2]\nBudget: 42k EUR for Q3" in extracted
    assert "The budget is 42k." in json.dumps(bot.posts_in("C1", parent)[-1])
    assert len([r for r in caplog.records if "refused a PDF document" in r.getMessage()]) == 1
    with sessionmaker(engine)() as s:  # one answer, no failure for the refused attempt
        assert [r.outcome for r in s.scalars(select(UsageRecord))] == ["ok"]

    bot.mention("C1", "and the schedule?", thread_ts=parent)
    assert [r["status"] for r in model.requests] == [400, 200, 200]  # text at once: no refusal
    assert not documents(model, 2)
    assert len(slack.downloads) == 1  # the text came from what was kept, not a new download


def test_one_pdf_refused_is_sent_as_text_once_and_documents_stay_on(bot, slack, model):
    model.enqueue(400, message="messages.0.content.4.source: The PDF specified was not valid.")
    parent = thread_with(slack, [{"name": "spec.pdf", "content": SPEC}])
    bot.mention("C1", "what is the budget?", thread_ts=parent)
    assert [r["status"] for r in model.requests] == [400, 200]
    assert documents(model, 0) and not documents(model, 1)  # answered from the text
    bot.mention("C1", "and the schedule?", thread_ts=parent)
    assert model.requests[2]["status"] == 200 and documents(model, 2)  # not remembered


def test_a_pdf_over_the_page_limit_goes_as_its_text(bot, slack, model, engine):
    long = pdf([f"Chapter {n}: the part about item {n}." for n in range(1, 102)])
    parent = thread_with(slack, [{"name": "manual.pdf", "content": long}])
    bot.mention("C1", "summarize the manual", thread_ts=parent)
    assert model.requests[0]["status"] == 200 and not documents(model, 0)
    (extracted,) = [t for t in texts(model, 0) if t.startswith("[the text extracted from manual")]
    assert "(101 pages): it has more than the 100 pages a request may hold" in extracted
    assert "[page 101]\nChapter 101: the part about item 101." in extracted
    with sessionmaker(engine)() as s:
        row = s.scalars(select(ThreadFile)).one()
        assert (row.kind, row.width) == ("pdf", 101)
        assert unpack_pdf(row.content)[0] == b""  # no bytes kept that can never be sent


def test_pdfs_past_the_request_page_limit_go_as_text_the_earlier_stay_documents(
    make_bot, slack, model
):
    bot = make_bot(context_budget_tokens=1_000_000)  # room for 120 pages as documents
    first = pdf([f"First report, page {n}." for n in range(1, 61)])
    second = pdf([f"Second report, page {n}." for n in range(1, 61)])
    parent = slack.add_thread("C1", 2)
    for name, content in (("q1.pdf", first), ("q2.pdf", second)):
        file = {"name": name, "content": content}
        slack.add_message("C1", name, user="U2", thread_ts=parent, files=[file])
    bot.mention("C1", "compare the reports", thread_ts=parent)
    assert model.requests[0]["status"] == 200
    assert len(documents(model, 0)) == 1  # 60 + 60 pages: the second one as text
    (extracted,) = [t for t in texts(model, 0) if t.startswith("[the text extracted from q2.pdf")]
    assert "the thread's earlier PDFs fill what one request may hold" in extracted

    slack.add_message("C1", "one more", user="U2", thread_ts=parent)
    bot.mention("C1", "and now?", thread_ts=parent)  # the earlier decision stands
    assert [bare(b) for b in documents(model, 1)] == [bare(b) for b in documents(model, 0)]


def test_a_pdf_too_large_for_the_context_budget_goes_as_its_text(make_bot, slack, model):
    bot = make_bot(context_budget_tokens=8000)  # a document may take half: 4,000 tokens
    parent = thread_with(slack, [{"name": "spec.pdf", "content": SPEC}])
    bot.mention("C1", "what is the budget?", thread_ts=parent)
    assert not documents(model, 0)
    (extracted,) = [t for t in texts(model, 0) if t.startswith("[the text extracted from spec")]
    assert "as a document it would take about 4," in extracted


def test_an_encrypted_or_damaged_pdf_is_named_with_the_reason(bot, slack, model):
    parent = thread_with(
        slack,
        [
            {"name": "locked.pdf", "content": encrypted(SPEC)},
            {"name": "broken.pdf", "content": SPEC[: len(SPEC) // 3]},
        ],
    )
    bot.mention("C1", "what do the PDFs say?", thread_ts=parent)
    assert model.requests[0]["status"] == 200 and not documents(model, 0)
    found = texts(model, 0)
    assert any("locked.pdf could not be read: the PDF is encrypted" in t for t in found)
    assert any("broken.pdf could not be read: the PDF is damaged" in t for t in found)
    answer = json.dumps(bot.posts_in("C1", parent)[-1])
    assert "locked.pdf (the PDF is encrypted (password-protected)" in answer
    assert "broken.pdf (the PDF is damaged" in answer


def test_a_damaged_pdf_is_not_downloaded_again_until_slack_says_it_changed(bot, slack, model):
    parent = thread_with(slack, [{"name": "broken.pdf", "content": SPEC[: len(SPEC) // 3]}])
    bot.mention("C1", "what does the PDF say?", thread_ts=parent)
    (file_id,) = slack.downloads
    bot.mention("C1", "and now?", thread_ts=parent)
    assert slack.downloads == [file_id]  # its own bytes are the cause: remembered, not fetched
    assert any("broken.pdf could not be read: the PDF is damaged" in t for t in texts(model, 1))
    assert "broken.pdf (the PDF is damaged" in json.dumps(bot.posts_in("C1", parent)[-1])

    bot.deliver(slack.file_change_event(file_id, SPEC))  # a good version uploaded in its place
    bot.mention("C1", "and with the new version?", thread_ts=parent)
    assert slack.downloads == [file_id, file_id]
    assert len(documents(model, 2)) == 1
    assert not any("could not be read" in t for t in texts(model, 2))


def test_a_pdf_encrypted_without_a_password_goes_as_its_text(bot, slack, model):
    restricted = encrypted(SPEC, password="")  # opens without one: forms, statements
    parent = thread_with(slack, [{"name": "statement.pdf", "content": restricted}])
    bot.mention("C1", "what is the budget?", thread_ts=parent)
    assert model.requests[0]["status"] == 200 and not documents(model, 0)
    (extracted,) = [t for t in texts(model, 0) if t.startswith("[the text extracted from state")]
    assert "(3 pages): it is encrypted, which the model does not take as a document" in extracted
    assert "[page 2]\nBudget: 42k EUR for Q3" in extracted


def test_a_pdf_in_the_messages_tab_is_a_document_read_from_cache_on_the_next_turn(
    make_bot, slack, model
):
    bot = make_bot(clock=slack.clock, sleep=slack.sleep)
    bot.app.start_receiving()  # as `serve` does: the DM is kept from its events
    slack.advance(60)
    first = slack.dm_event(
        "U1", "What does this spec say?", files=[{"name": "spec.pdf", "content": SPEC}]
    )
    assert bot.deliver(first).status_code == 200
    slack.advance(40)
    model.advance(40)
    bot.deliver(slack.dm_event("U1", "And the budget?", thread_ts=first["ts"]))

    def docs(i: int) -> list[dict]:
        return [
            bare(b)
            for m in model.requests[i]["body"]["messages"]
            if isinstance(m["content"], list)
            for b in m["content"]
            if b["type"] == "document"
        ]

    assert len(docs(0)) == 1 and docs(1) == docs(0)  # the same bytes on the next turn
    assert len(slack.downloads) == 1
    assert model.usages[1]["cache_read_input_tokens"] >= SPEC_TOKENS


def test_reading_a_pdfs_text_stops_at_its_time_limit():
    """pypdf is pure Python: a huge or crafted PDF could keep a worker busy for minutes. No
    page is begun past the time limit; the pages not read count as dense as those read."""
    pages = [f"Page {n}: " + "numbers and words " * 40 for n in range(1, 7)]
    ticks = iter(range(0, 1000, 4))  # every page takes 4 s on this clock

    whole = read_pdf(pdf(pages))
    cut = read_pdf(pdf(pages), seconds=10, clock=lambda: float(next(ticks)))
    assert cut.pages == whole.pages == 6
    assert "[page 3]" in cut.text and "[page 4]" not in cut.text
    assert "the text goes on to page 6; only up to page 3 is here" in cut.text
    assert abs(cut.text_tokens - whole.text_tokens) < whole.text_tokens / 10
