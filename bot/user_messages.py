"""What users read when something stops an answer: errors, refusals, cut-off answers, the
status lines while a thread is read. One home, so the wording stays consistent and reviewable.

Operators read logs instead; nothing here is logged.
"""

from __future__ import annotations

from bot.llm import Completion, LLMError

LLM_MESSAGES = {
    "auth": "the model endpoint rejected the API key. An admin needs to check `ANTHROPIC_API_KEY`.",
    "billing": "the model endpoint refused the request for billing reasons. An admin needs to "
    "check the account's credit.",
    "permission": "the API key is not allowed to use this model. An admin needs to check the key "
    "and `ANTHROPIC_MODEL` (or the model picked in my App Home).",
    "not_found": "the configured model is not available on this endpoint. An admin needs to "
    "check `ANTHROPIC_MODEL` (or the model picked in my App Home).",
    "rate_limited": "the model is rate-limited right now, even after retrying. Please try again "
    "in a minute.",
    "overloaded": "the model is overloaded right now, even after retrying. Please try again in a "
    "few minutes.",
    "too_large": "this thread is too large for the model. Ask about a narrower part of it, or an "
    "admin can lower `CONTEXT_BUDGET_TOKENS`.",
    "timeout": "the model did not answer in time. Please try again shortly.",
    "connection": "I could not reach the model endpoint. Please try again shortly; if it keeps "
    "failing, an admin should check `ANTHROPIC_BASE_URL`.",
    "server": "the model endpoint had an internal error, even after retrying. Please try again "
    "shortly.",
}
LLM_CUT_OFF = {
    "overloaded": "the model became overloaded partway",
    "rate_limited": "the model hit a rate limit partway",
    "connection": "the connection to the model broke partway",
    "timeout": "the model took too long partway",
}
STOP_NOTES = {
    "max_tokens": "The answer was cut off at the length limit. Ask me for the rest, or ask a "
    "narrower question.",
    "model_context_window_exceeded": "The answer was cut off: the thread and the answer filled "
    "the model's context window. Ask a narrower question, about part of the thread.",
    "refusal": "The model declined to continue this answer{why}. Try rephrasing the question, "
    "or ask about another part of the thread.",
    "pause_turn": "The model paused before finishing this answer. Ask again to get the whole "
    "answer.",
    "tool_use": "The model stopped to use a tool I don't offer, so the answer is incomplete. Ask "
    "again, perhaps more narrowly.",
}
_WHOLE = {None, "end_turn", "stop_sequence"}
_OTHER_STOP = (
    "The model stopped early ({reason}), so the answer may be incomplete. Ask again, or ask a "
    "narrower question."
)
_DEFAULT_LLM_MESSAGE = (
    "the model endpoint rejected the request. An admin can find the cause in the bot's logs."
)
SLACK_READ_MESSAGES = {
    "not_in_channel": "I'm not a member of this channel, so I can't read it. Invite me with "
    "/invite <@{bot}> and ask again.",
    "channel_not_found": "I can't see this conversation. Invite me with /invite <@{bot}> and ask "
    "again.",
    "thread_not_found": "I couldn't find that thread; it may have been deleted.",
    "missing_scope": "I'm missing a Slack permission needed to read this conversation. An admin "
    "needs to reinstall the app with the scopes in its manifest.",
    "ratelimited": "Slack is rate-limiting me right now. Please try again in a minute.",
}
EXTERNAL_REQUESTER = (
    "Sorry, I only answer people of the organisation that installed me; in a shared channel, "
    "what other organisations post stays out of my prompts. Ask someone from that "
    "organisation to ask me."
)


SOMETHING_WRONG = (
    "Sorry, something went wrong on my side. The operator's logs have the details; please try "
    "again."
)
GAVE_UP_ANSWER = (
    "Sorry, I couldn't answer this after several attempts. Please ask again; if it keeps "
    "failing, the operator's logs have the cause."
)
GAVE_UP_SUMMARY = "Sorry, I couldn't finish this summary after several attempts. Please try again."
SHARE_WENT_WRONG = "Sorry, something went wrong on my side; please try again."
SHARE_GAVE_UP = "Sorry, I couldn't post it; please try again."
UNREADABLE_REPLY = (
    "I can't use this workspace's Slack credentials right now, so I can't answer. The bot's "
    "operator has been told; please try again later."
)
# /summarize and the shortcut: a link or channel the requester may not have summarized.
REFUSAL = (
    "I can't summarize that link: either it doesn't exist, or it's a private conversation "
    "that you or I are not part of. If you are a member, invite me there "
    "(/invite <@{bot}>) and try again."
)
MESSAGE_GONE = "That message no longer exists (it may have been deleted)."
NOTHING_IN_WINDOW = "Nothing was said in this channel in that window."
SUMMARY_GONE = "That summary is no longer available; run /summarize again."
SUMMARY_SHARED = "That summary was already posted."


def llm_error_text(exc: LLMError) -> str:
    """What to tell the user about a failed model call."""
    return "Sorry, " + LLM_MESSAGES.get(exc.kind, _DEFAULT_LLM_MESSAGE)


def stop_note(completion: Completion) -> str | None:
    """What to tell the reader when the model did not finish its answer (None when it did)."""
    reason = completion.stop_reason
    if reason in _WHOLE:
        return None
    if reason == "refusal":
        why = f" ({completion.stop_explanation.rstrip('.')})" if completion.stop_explanation else ""
        return STOP_NOTES["refusal"].format(why=why)
    return STOP_NOTES.get(str(reason)) or _OTHER_STOP.format(reason=str(reason)[:32])


def reading_status(count: int) -> tuple[str, list[str]]:
    """The status line (and its rotating loading messages) while a thread is read."""
    what = f"{count:,} messages" if count else "the thread"
    return f"is reading {what}…", [
        f"Reading {what}…",
        "Following who said what…",
        "Looking for decisions and owners…",
        "Noting open questions…",
    ]


def _duration(seconds: float) -> str:
    """A wait in words: "under a minute", "about 1 minute", "about 14 minutes"."""
    minutes = round(seconds / 60)
    if minutes < 1:
        return "under a minute"
    if minutes < 90:
        return f"about {minutes} minute{'s' if minutes != 1 else ''}"
    return f"about {minutes / 60:.1f} hours"


def waiting_status(eta: float, kept: int, expected: int | None, why: str) -> tuple[str, list[str]]:
    """The status line while reads wait for Slack's limit: what is happening, how long."""
    left = _duration(eta)
    got = f"{kept:,} of {expected:,}" if expected and expected >= kept else f"{kept:,}"
    return f"is reading the thread from Slack: {left} left", [
        f"Reading from Slack: {left} left"[:50],
        f"{got} messages read so far"[:50],
        f"{why}"[:50],
    ]


def reads_wait_text(eta: float, why: str) -> str:
    """A summary whose reads wait for Slack's limit: what happens, and how long."""
    return (
        f"Reading the conversation from Slack: {_duration(eta)} to go ({why}). "
        "The summary follows here when it is done."
    )


def partial_note(used: int, expected: int | None, eta: float) -> str:
    """The note under an answer given from part of the thread while the rest is read."""
    of = f" of about {expected:,}" if expected and expected > used else ""
    return (
        f"Partial answer: from the {used:,}{of} messages read so far. Slack limits how fast "
        f"this app may read; the complete answer follows in {_duration(eta)}."
    )


def writing_status(count: int) -> tuple[str, list[str]]:
    """The status line (and its loading messages) once the thread is read."""
    return f"is reading {count:,} messages…", [
        f"Read {count:,} messages…",
        "Weighing what matters…",
        "Writing the answer…",
    ]


def images_left_out_note(names: tuple[str, ...], limit: int) -> str | None:
    """A line under an answer when older images of the thread were left out of its request."""
    if not names:
        return None
    count = "1 older image" if len(names) == 1 else f"{len(names)} older images"
    return (
        f"{count} of this thread went to the model only by name: one request holds at most "
        f"{limit} images (fewer when they are large or PDFs take room), so the oldest are left out."
    )


def read_error_text(error: str, bot_user_id: str) -> str:
    """What to tell the user when Slack refused a read."""
    text = SLACK_READ_MESSAGES.get(
        error, "Slack wouldn't let me read this conversation ({error}). Please try again."
    )
    return text.format(bot=bot_user_id, error=error)


def cut_off_note(kind: str) -> str:
    """The note under an answer the model stopped writing partway (`kind`: the LLMError's)."""
    why = LLM_CUT_OFF.get(kind, "the model stopped partway")
    return f"The answer was cut off: {why}. Ask again for the rest."


def refused_text(exc: Exception) -> str:
    """A refusal that already says why (a spend budget reached)."""
    return f"Sorry, {exc}"


def unposted_text(outcome: str) -> str:
    """The answer was written but Slack refused to post it (`outcome`: post_<error>)."""
    return (
        f"I wrote an answer but couldn't post it here (Slack said "
        f"`{outcome.removeprefix('post_')}`)."
    )


def summary_read_error(error: str, bot_user_id: str) -> str:
    """What to tell a summary's requester when Slack refused a read."""
    if error == "thread_not_found":
        return MESSAGE_GONE
    if error == "channel_not_found":
        return REFUSAL.format(bot=bot_user_id)
    return read_error_text(error, bot_user_id)


def not_in_channel(channel: str, bot_user_id: str) -> str:
    """The bot is not in the public channel a summary was asked of."""
    return (
        f"I'm not in <#{channel}>, so I can't read it. Invite me with "
        f"/invite <@{bot_user_id}> in that channel and try again."
    )


def other_workspace(host: str) -> str:
    """A link to a thread of another workspace."""
    return (
        f"That link is from another workspace ({host}.slack.com). I can only "
        "summarize threads in this workspace."
    )


def share_failed(error: str | None) -> str:
    """Posting a shared summary failed."""
    return (
        f"I couldn't post it (Slack said `{error}`). If I'm not in the channel, "
        "invite me and try again."
    )


# -- the bot's DM (its Messages tab) ------------------------------------------------------------

DM_HELP = (
    "Hi! Ask me anything here; each conversation is a thread of its own, and its follow-ups are "
    "cheap because the conversation so far stays in the model's cache.\n"
    "• `catch me up on #channel` (or `what did I miss in #channel since yesterday?`): a recap "
    "of a channel you can read, thread replies included\n"
    "• paste a thread's link (⋮ → *Copy link*): a summary of that thread, with your question "
    "if you add one\n"
    "• `my usage this week`: what I cost and what caching saved\n"
    "Only you see this conversation."
)
DM_HINT_RECAP = (
    "Name the channel and I'll recap it, thread replies included: `catch me up on #channel`, "
    "or `what did I miss in #channel since yesterday?` (type # to pick it; `3d`, `12h` or "
    "`this week` for another window). It has to be a channel you can read."
)
DM_HINT_THREAD = (
    "Paste the thread's link here: ⋮ on any of its messages → *Copy link*. Add a question after "
    "it if you like (“what did they decide?”). It has to be a thread you can read."
)
DM_REFUSAL = (
    "I can't catch you up on that conversation: either it doesn't exist, or it's private and "
    "you or I are not part of it. If you are a member, invite me there (/invite <@{bot}>) and "
    "ask again."
)
DM_READING_STATUS = ("is catching up…", ["Reading the conversation…", "Writing the summary…"])
