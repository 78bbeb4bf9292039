"""A deterministic Slack workload for the cache benchmark: threads, new messages and requests.

`generate(seed, threads=40)` needs no network and no bot: it returns every event (a message
posted in a thread, or a request about a thread) on one global timeline, in time order.
Thread sizes run from 20 to 2,000 messages (a few of 1,500 or more); text mixes English, Chinese,
Japanese, German and Spanish, with code blocks, `<https://…|label>` links and `<@U…>` mentions.
Each thread gets 1-10 requests (an @mention, `/summarize <thread link>` or the "Summarize thread"
shortcut) spaced seconds to hours apart, and each request is marked with its slices.

A `Profile` shapes the workload: how the team's threads are paced (bursty, slow and
asynchronous, a mix), how many threads are asked about only once, how long the threads are,
and whether the workspace has history (warm-up threads before the measured ones, not counted)
or starts on a fresh database (cold start, and the sparse profile: few threads over a day and a
half, gaps up to a day).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

START = 1_767_258_000.0  # 2026-01-01 09:00 UTC: the first request can come at once
SHORT_GAP = 300.0  # seconds: the 5-minute cache TTL
MEDIUM_GAP = 3600.0  # seconds: the 1-hour cache TTL
LONG_THREAD = 1000  # messages
WIND_DOWN = 0.5  # threads with a few acknowledgements after their last answer
CARRY_ON = 0.2  # threads whose people keep discussing after their last answer
MAX_MESSAGES = 2000  # per thread, the workload's own messages (bot answers come on top)

FIRST = "first request"
SHORT = "short gap"
MEDIUM = "medium gap"
LONG = "long gap"
LONG_THREAD_SLICE = "long thread"
SLICES = (SHORT, MEDIUM, LONG, LONG_THREAD_SLICE)

LANGUAGES = ("en", "zh", "ja", "de", "es")
USERS = (
    ("U1", "Alice Archer", "alice"),
    ("U2", "Bob Baker", "bob"),
    ("U3", "Chen Wei", "陈伟"),
    ("U4", "Daiki Sato", "佐藤大輝"),
    ("U5", "Elena García", "elena"),
    ("U6", "Felix Müller", "felix"),
    ("U7", "Grace Kim", "grace"),
    ("U8", "Hiro Tanaka", "ひろ"),
)
CHANNELS = (("C1", "general"), ("C2", "eng-backend"), ("C3", "incidents"), ("C4", "produkt"))
KINDS = ("mention", "summarize", "shortcut")
RHYTHMS = {  # how likely each gap kind is on a thread with this rhythm
    "chatty": (0.70, 0.20, 0.10),
    "steady": (0.20, 0.65, 0.15),
    "sporadic": (0.15, 0.25, 0.60),
}


@dataclass(frozen=True)
class Profile:
    """A family member of the benchmark's workloads."""

    name: str
    rhythms: tuple[float, float, float]  # weights of chatty, steady and sporadic threads
    once: float  # share of threads asked about only once
    long_threads: bool = False  # every thread 1,000-1,850 messages at the start
    warmup: float = 0.5  # warm-up threads (history the workspace learnt) per measured thread
    threads: int = 24  # measured threads (full run)
    about: str = ""
    span: float = 18.0  # hours over which the measured threads' first requests fall
    longest_gap: float = 8.0  # hours: the longest gap between two requests on a thread


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile("bursty", (0.8, 0.15, 0.05), 0.2, about="teams asking again within minutes"),
        Profile("slow", (0.1, 0.45, 0.45), 0.35, about="asynchronous teams, gaps of 5 min-8 h"),
        Profile("mixed", (0.4, 0.35, 0.25), 0.3, about="a mix of both"),
        Profile(
            "long", (0.4, 0.35, 0.25), 0.2, long_threads=True, threads=10,
            about="threads of 1,000-1,850 messages",
        ),
        Profile("cold", (0.4, 0.35, 0.25), 0.3, warmup=0.0, about="the mix on a fresh database"),
        Profile(
            "sparse", (0.3, 0.3, 0.4), 0.35, warmup=0.0, threads=15, span=30.0, longest_gap=24.0,
            about="few threads over a day and a half on a fresh database, gaps up to a day",
        ),
    )
}


@dataclass(frozen=True)
class Post:
    """A message posted in a thread at `at`; `index` 0 is the thread's parent."""

    at: float
    thread: int
    index: int
    user: str
    text: str


@dataclass(frozen=True)
class Ask:
    """A request about a thread.

    `kind` is mention (its text is the question; the mention is also a message of the thread),
    summarize (`/summarize <link>`, `text` is what follows the link) or shortcut (on message
    number `target` of the thread). `size` is how many workload messages the thread has when
    the request is made; `gap` the seconds since the previous request on the thread.
    """

    at: float
    thread: int
    seq: int
    kind: str
    user: str
    text: str
    target: int
    size: int
    gap: float | None
    command_channel: str = "C1"
    slices: tuple[str, ...] = ()
    warmup: bool = False  # before the measured period: builds the workspace's history only


@dataclass(frozen=True)
class ThreadPlan:
    """One thread: where it lives, its main language and rhythm, and its size at the start."""

    index: int
    channel: str
    language: str
    rhythm: str
    initial: int
    requests: int
    warmup: bool = False


@dataclass(frozen=True)
class Workload:
    """Everything that happens, in time order."""

    seed: int
    threads: tuple[ThreadPlan, ...]
    events: tuple[Post | Ask, ...]
    users: tuple[tuple[str, str, str], ...] = USERS
    channels: tuple[tuple[str, str], ...] = CHANNELS
    profile: str = "mixed"

    @property
    def asks(self) -> list[Ask]:
        """The measured requests, in time order (warm-up requests left out)."""
        return [e for e in self.events if isinstance(e, Ask) and not e.warmup]

    @property
    def warmup_asks(self) -> list[Ask]:
        """The warm-up requests: they build the workspace's history and are not counted."""
        return [e for e in self.events if isinstance(e, Ask) and e.warmup]

    @property
    def posts(self) -> list[Post]:
        """The messages, in time order."""
        return [e for e in self.events if isinstance(e, Post)]


def gap_slice(gap: float | None) -> str:
    """The gap slice of a request `gap` seconds after the previous one on its thread."""
    if gap is None:
        return FIRST
    if gap <= SHORT_GAP:
        return SHORT
    if gap <= MEDIUM_GAP:
        return MEDIUM
    return LONG


def slices_of(gap: float | None, size: int) -> tuple[str, ...]:
    """Every slice a request belongs to."""
    out = [gap_slice(gap)]
    if size >= LONG_THREAD:
        out.append(LONG_THREAD_SLICE)
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# Text

SERVICES = ("billing-api", "auth-gateway", "search-indexer", "payments", "notifier", "ledger")
REPOS = ("acme/web", "acme/billing", "acme/infra", "acme/mobile", "acme/data-pipeline")
LINKS = (
    "<https://github.com/{repo}/pull/{n}|PR #{n}>",
    "<https://acme.atlassian.net/browse/OPS-{n}|OPS-{n}>",
    "<https://grafana.acme.io/d/{svc}?from=now-6h|{svc} dashboard>",
    "<https://docs.acme.io/runbooks/{svc}>",
    "<https://status.acme.io/incidents/{n}|status page>",
)

PHRASES: dict[str, tuple[str, ...]] = {
    "en": (
        "I think we should roll back {svc} before the {day} release.",
        "The {svc} dashboard shows p99 at {ms} ms since the deploy, up from {ms2} ms.",
        "{who} can you take a look at the flaky test in {repo}? It failed {n} times today.",
        "Agreed, let's keep the feature flag off until QA signs off.",
        "Here is the incident doc: {link}",
        "Root cause looks like connection pool exhaustion on {svc}; max_connections is still {n}.",
        "I'll open a ticket and assign it to {who}.",
        "Customer support reported {n} failed checkouts in the last hour.",
        "Can we move the migration to {day}? The batch job runs overnight.",
        "Heads up: the on-call rotation changes on {day}, {who} takes over.",
        "The canary in eu-west stayed healthy for two hours, error rate {pct}%.",
        "We agreed to freeze deploys to {svc} until the postmortem is done.",
        "Benchmarks for the new index: {ms} ms median, {ms2} ms p99 on the staging data set.",
        "Does anyone know why {svc} retries 429s without backoff?",
    ),
    "zh": (
        "我觉得我们应该在{day}发布之前先回滚{svc}。",
        "{svc}的监控显示部署后p99延迟是{ms}毫秒，之前是{ms2}毫秒。",
        "{who} 你能看一下{repo}里那个不稳定的测试吗？今天失败了{n}次。",
        "同意，先把功能开关关掉，等测试团队确认后再打开。",
        "事故文档在这里：{link}",
        "根本原因看起来是{svc}的连接池耗尽了，max_connections还是{n}。",
        "我来开一个工单，分配给{who}。",
        "客服反馈过去一小时有{n}笔结账失败。",
        "数据库迁移能不能挪到{day}？晚上还有批处理任务在跑。",
        "提醒一下：{day}开始值班轮换，由{who}接手。",
        "欧洲西部的金丝雀实例两个小时都很稳定，错误率{pct}%。",
        "我们决定在复盘完成之前冻结{svc}的发布。",
        "新索引的压测结果：中位数{ms}毫秒，p99是{ms2}毫秒。",
        "有人知道为什么{svc}遇到429时不做退避就直接重试吗？",
    ),
    "ja": (
        "{day}のリリース前に{svc}をロールバックした方がいいと思います。",
        "デプロイ後、{svc}のp99レイテンシが{ms2}msから{ms}msに上がっています。",
        "{who} {repo}の不安定なテストを見てもらえますか？今日{n}回落ちました。",
        "了解です。QAの確認が取れるまでフィーチャーフラグはオフのままにしましょう。",
        "障害ドキュメントはこちらです：{link}",
        "原因は{svc}のコネクションプール枯渇のようです。max_connectionsはまだ{n}です。",
        "チケットを作成して{who}さんにアサインします。",
        "サポートから、直近1時間で決済失敗が{n}件あったと報告がありました。",
        "マイグレーションを{day}にずらせますか？夜間バッチが動いているので。",
        "お知らせ：{day}からオンコール当番が変わり、{who}さんが担当します。",
        "eu-westのカナリアは2時間安定していて、エラー率は{pct}%でした。",
        "ポストモーテムが終わるまで{svc}へのデプロイは凍結することになりました。",
        "新しいインデックスのベンチマーク：中央値{ms}ms、p99は{ms2}msです。",
        "{svc}が429をバックオフなしでリトライしている理由を知っている人はいますか？",
    ),
    "de": (
        "Ich glaube, wir sollten {svc} vor dem Release am {day} zurückrollen.",
        "Das Dashboard von {svc} zeigt seit dem Deploy eine p99 von {ms} ms, vorher {ms2} ms.",
        "{who} kannst du dir den wackeligen Test in {repo} ansehen? Heute {n}-mal fehlgeschlagen.",
        "Einverstanden, das Feature-Flag bleibt aus, bis die QA freigibt.",
        "Hier ist das Incident-Dokument: {link}",
        "Ursache scheint ein erschöpfter Connection-Pool bei {svc} zu sein; max_connections={n}.",
        "Ich lege ein Ticket an und weise es {who} zu.",
        "Der Support meldet {n} fehlgeschlagene Bestellungen in der letzten Stunde.",
        "Können wir die Migration auf {day} verschieben? Nachts läuft noch der Batch-Job.",
        "Zur Info: Ab {day} wechselt die Rufbereitschaft, {who} übernimmt.",
        "Der Canary in eu-west war zwei Stunden lang stabil, Fehlerquote {pct} %.",
        "Wir haben beschlossen, Deploys auf {svc} bis zum Postmortem einzufrieren.",
        "Benchmarks für den neuen Index: Median {ms} ms, p99 {ms2} ms auf den Staging-Daten.",
        "Weiß jemand, warum {svc} bei 429 ohne Backoff erneut versucht?",
    ),
    "es": (
        "Creo que deberíamos revertir {svc} antes del lanzamiento del {day}.",
        "El panel de {svc} muestra un p99 de {ms} ms desde el despliegue, antes {ms2} ms.",
        "{who} ¿puedes revisar el test inestable en {repo}? Hoy falló {n} veces.",
        "De acuerdo, dejemos el feature flag apagado hasta que QA dé el visto bueno.",
        "Aquí está el documento del incidente: {link}",
        "La causa parece ser el pool de conexiones agotado en {svc}; max_connections sigue en {n}.",
        "Abro un ticket y se lo asigno a {who}.",
        "Soporte reporta {n} pagos fallidos en la última hora.",
        "¿Podemos mover la migración al {day}? El proceso por lotes corre de noche.",
        "Aviso: el turno de guardia cambia el {day}, se encarga {who}.",
        "El canario en eu-west estuvo estable dos horas, tasa de error {pct} %.",
        "Decidimos congelar los despliegues de {svc} hasta terminar el postmortem.",
        "Benchmarks del nuevo índice: mediana {ms} ms y p99 {ms2} ms con datos de staging.",
        "¿Alguien sabe por qué {svc} reintenta los 429 sin backoff?",
    ),
}
ACKS: dict[str, tuple[str, ...]] = {
    "en": ("+1", "lgtm", "thanks!", "on it", "sounds good to me", "ack, looking now"),
    "zh": ("+1", "收到", "谢谢！", "我来看看", "没问题", "好的，马上处理"),
    "ja": ("+1", "了解です", "ありがとうございます！", "見てみます", "問題なさそう", "対応します"),
    "de": ("+1", "passt", "danke!", "schaue ich mir an", "klingt gut", "bin dran"),
    "es": ("+1", "perfecto", "¡gracias!", "lo reviso", "me parece bien", "en ello"),
}
DAYS: dict[str, tuple[str, ...]] = {
    "en": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday"),
    "zh": ("周一", "周二", "周三", "周四", "周五"),
    "ja": ("月曜日", "火曜日", "水曜日", "木曜日", "金曜日"),
    "de": ("Montag", "Dienstag", "Mittwoch", "Donnerstag", "Freitag"),
    "es": ("lunes", "martes", "miércoles", "jueves", "viernes"),
}
CODE_INTRO: dict[str, str] = {
    "en": "This is the change I have in mind:",
    "zh": "我想改成这样：",
    "ja": "こういう変更を考えています：",
    "de": "So stelle ich mir die Änderung vor:",
    "es": "Este es el cambio que propongo:",
}
CODE = (
    "```python\nasync def fetch(client, url, retries={n}):\n    for attempt in range(retries):\n"
    "        resp = await client.get(url, timeout=5)\n        if resp.status_code != 429:\n"
    "            return resp\n        await asyncio.sleep(min(2 ** attempt, 30))\n"
    "    raise RuntimeError('rate limited')\n```",
    "```sql\nSELECT account_id, count(*) AS failures\nFROM payments\n"
    "WHERE status = 'failed' AND created_at > now() - interval '{n} minutes'\n"
    "GROUP BY account_id\nORDER BY failures DESC\nLIMIT 20;\n```",
    "```yaml\nresources:\n  limits:\n    memory: {n}Mi\n    cpu: 500m\n"
    "readinessProbe:\n  httpGet:\n    path: /healthz\n    port: 8080\n```",
    "```\n$ kubectl -n {svc} rollout undo deployment/{svc}\n"
    "deployment.apps/{svc} rolled back\n$ kubectl -n {svc} get pods | grep -c Running\n{n}\n```",
    '```json\n{{"service": "{svc}", "max_connections": {n}, "idle_timeout_ms": 30000}}\n```',
    "```go\nfunc (s *Server) Retry(ctx context.Context) error {{\n"
    "\treturn backoff.Retry(s.call, backoff.WithMaxRetries(backoff.NewExponentialBackOff(), {n}))"
    "\n}}\n```",
)
QUESTIONS: dict[str, tuple[str, ...]] = {
    "en": (
        "what did we decide about the rollback?",
        "what are the open action items and who owns them?",
        "summarize the last hour for me",
        "which PRs are still waiting for review?",
        "is the {svc} issue resolved?",
    ),
    "zh": (
        "我们最后决定回滚了吗？",
        "还有哪些待办事项，分别是谁负责？",
        "帮我总结一下最近一小时的讨论",
        "哪些PR还在等评审？",
        "{svc}的问题解决了吗？",
    ),
    "ja": (
        "ロールバックについて何が決まりましたか？",
        "残っているアクションアイテムと担当者を教えてください",
        "直近1時間の議論をまとめてください",
        "レビュー待ちのPRはどれですか？",
        "{svc}の問題は解決しましたか？",
    ),
    "de": (
        "was haben wir zum Rollback entschieden?",
        "welche Aufgaben sind noch offen und wer kümmert sich?",
        "fasse die letzte Stunde für mich zusammen",
        "welche PRs warten noch auf Review?",
        "ist das Problem mit {svc} gelöst?",
    ),
    "es": (
        "¿qué decidimos sobre el rollback?",
        "¿qué tareas quedan abiertas y quién se encarga?",
        "resúmeme la última hora",
        "¿qué PRs siguen esperando revisión?",
        "¿está resuelto el problema de {svc}?",
    ),
}
SUMMARIZE_EXTRA = ("", "", "", "focus on decisions", "only open questions", "in English please")


def _fill(rng: random.Random, template: str, lang: str, svc: str, repo: str) -> str:
    n = rng.randint(2, 900)
    link = rng.choice(LINKS).format(repo=repo, n=rng.randint(100, 9999), svc=svc)
    return template.format(
        svc=svc,
        repo=repo,
        day=rng.choice(DAYS[lang]),
        who=f"<@{rng.choice(USERS)[0]}>",
        n=n,
        ms=rng.randint(80, 2400),
        ms2=rng.randint(40, 900),
        pct=round(rng.uniform(0.01, 4.0), 2),
        link=link,
    )


def message_text(rng: random.Random, lang: str, svc: str, repo: str) -> str:
    """One realistic Slack message (mrkdwn source, as the Web API returns it)."""
    if rng.random() < 0.12:
        lang = "en"  # mixed teams: some messages in English whatever the thread's language
    roll = rng.random()
    if roll < 0.15:
        return rng.choice(ACKS[lang])
    if roll < 0.23:
        code = rng.choice(CODE).format(n=rng.randint(2, 512), svc=svc)
        return f"{CODE_INTRO[lang]}\n{code}"
    sentences = 1 if roll < 0.6 else rng.randint(2, 4)
    parts = [_fill(rng, rng.choice(PHRASES[lang]), lang, svc, repo) for _ in range(sentences)]
    sep = "" if lang in ("zh", "ja") else " "
    text = sep.join(parts)
    if rng.random() < 0.08:
        text += "\n• " + "\n• ".join(
            _fill(rng, rng.choice(PHRASES[lang]), lang, svc, repo) for _ in range(3)
        )
    return text


# ---------------------------------------------------------------------------------------------
# Timeline


def _log_uniform(rng: random.Random, low: float, high: float) -> float:
    return math.exp(rng.uniform(math.log(low), math.log(high)))


def _gap(rng: random.Random, kind: int, longest: float) -> float:
    """A gap of `kind` (0 short, 1 medium, 2 long, up to `longest` hours), in seconds."""
    if kind == 0:
        return round(_log_uniform(rng, 5, SHORT_GAP), 3)
    if kind == 1:
        return round(_log_uniform(rng, SHORT_GAP + 1, MEDIUM_GAP), 3)
    return round(_log_uniform(rng, MEDIUM_GAP + 1, longest * 3600), 3)


def generate(
    seed: int = 1, threads: int | None = None, *, quick: bool = False, profile: str = "mixed"
) -> Workload:
    """The workload of `profile` for `seed`: the same arguments always give the same events.

    `threads` measured threads (default: the profile's), plus the profile's warm-up threads,
    which start a day earlier. `quick` makes a small version for smoke tests: smaller threads
    (one of 1,000 messages), 1-5 requests each, every gap slice present.
    """
    prof = PROFILES[profile]
    threads = prof.threads if threads is None else threads
    if threads < 1:
        raise ValueError("threads must be at least 1")
    rng = random.Random(f"{profile}:{seed}")
    n_long = 0 if quick or prof.long_threads else max(1, round(threads / 10))
    long_ids = set(rng.sample(range(threads), n_long))
    big_id = rng.randrange(threads) if quick else None
    warmup = round(threads * prof.warmup)
    plans: list[ThreadPlan] = []
    events: list[tuple[float, int, int, Post | Ask]] = []
    for t in range(threads + warmup):
        warm = t >= threads
        lang = LANGUAGES[t] if t < len(LANGUAGES) else rng.choice(LANGUAGES)
        rhythm = rng.choices(list(RHYTHMS), weights=prof.rhythms)[0]
        if t in long_ids:
            initial = rng.randint(1500, 1850)
        elif t == big_id:
            initial = 1000
        elif quick:
            initial = int(_log_uniform(rng, 20, 200))
        elif prof.long_threads:
            initial = rng.randint(1000, 1850)
        elif rng.random() < 0.7:
            initial = int(_log_uniform(rng, 20, 400))
        else:
            initial = rng.randint(400, 1400)
        if quick and t < 3:
            n_requests = 3  # one thread per gap slice (see _thread_events)
        elif rng.random() < prof.once:
            n_requests = 1
        else:
            n_requests = rng.randint(2, 5) if quick else rng.randint(2, 10)
        channel = CHANNELS[t % len(CHANNELS)][0]
        plan = ThreadPlan(t, channel, lang, rhythm, initial, n_requests, warm)
        plans.append(plan)
        hours = rng.uniform(0, 4 if quick else prof.span) - (24 if warm else 0)
        first_at = round(START + hours * 3600, 3)
        after = random.Random(f"{profile}:{seed}:after:{t}")  # its own stream: the rest stays
        thread_events = _thread_events(
            rng, plan, first_at, quick=quick, after=after, longest=prof.longest_gap
        )
        for order, event in enumerate(thread_events):
            events.append((event.at, t, order, event))
    events.sort(key=lambda e: (e[0], e[1], e[2]))
    return Workload(
        seed=seed, threads=tuple(plans), events=tuple(e[3] for e in events), profile=profile
    )


def _thread_events(
    rng: random.Random,
    plan: ThreadPlan,
    first_at: float,
    *,
    quick: bool = False,
    after: random.Random | None = None,
    longest: float,
) -> list[Post | Ask]:
    """One thread's messages and requests, in time order; the first request at `first_at`.

    Between two requests the thread's people write at the thread's pace (the discussion that
    leads to the next question). After the last request (`after` draws it, so the events before
    stay the same): half the threads get a short wind-down (1-3 acknowledgements within 10
    minutes of the answer) and a fifth carry on discussing without asking again (at the
    thread's pace for 10-60 minutes); the rest go quiet at once."""
    t, lang = plan.index, plan.language
    svc, repo = rng.choice(SERVICES), rng.choice(REPOS)
    people = rng.sample([u[0] for u in USERS], rng.randint(2, 6))
    rate = _log_uniform(rng, 3, 60)  # new messages an hour between requests
    out: list[Post | Ask] = []
    posted = 0

    def post(at: float, user: str) -> None:
        nonlocal posted
        out.append(Post(round(at, 3), t, posted, user, message_text(rng, lang, svc, repo)))
        posted += 1

    parent_at = first_at - rng.uniform(1, 12) * 3600
    post(parent_at, people[0])
    for at in sorted(rng.uniform(parent_at + 1, first_at - 1) for _ in range(plan.initial - 1)):
        post(at, rng.choice(people))
    at = first_at
    gap: float | None = None
    for seq in range(plan.requests):
        if seq > 0:
            # quick runs: the first gap of thread t < 3 is of kind t, so every slice shows up
            forced = quick and seq == 1 and t < 3
            kind = t if forced else rng.choices(range(3), RHYTHMS[plan.rhythm])[0]
            gap = _gap(rng, kind, longest)
            room = MAX_MESSAGES - posted - (plan.requests - seq)
            k = min(room, 60, int(rate * gap / 3600 + rng.random() * 2))
            for new_at in sorted(rng.uniform(at + 0.5, at + gap - 0.5) for _ in range(k)):
                post(new_at, rng.choice(people))
            at = round(at + gap, 3)
        kind_name = rng.choices(KINDS, weights=(0.6, 0.2, 0.2))[0]
        user = rng.choice(people)
        text = ""
        target = 0
        if kind_name == "mention":
            text = rng.choice(QUESTIONS[lang]).format(svc=svc)
        elif kind_name == "summarize":
            text = rng.choice(SUMMARIZE_EXTRA)
        else:
            target = 0 if rng.random() < 0.4 else rng.randint(max(0, posted - 30), posted - 1)
        size = posted + (kind_name == "mention")
        out.append(
            Ask(
                at=at,
                thread=t,
                seq=seq,
                kind=kind_name,
                user=user,
                text=text,
                target=target,
                size=size,
                gap=gap,
                command_channel=rng.choice(CHANNELS)[0],
                slices=slices_of(gap, size),
                warmup=plan.warmup,
            )
        )
        if kind_name == "mention":
            posted += 1  # the mention itself is a message of the thread
    if after is not None:
        later: list[float] = []
        if after.random() < WIND_DOWN:
            later += [at + after.uniform(20, 600) for _ in range(after.randint(1, 3))]
        if after.random() < CARRY_ON:
            span = after.uniform(600, 3600)
            n = int(rate * span / 3600 + after.random() * 2)
            later += [at + after.uniform(20, span) for _ in range(n)]
        room = MAX_MESSAGES - posted
        for new_at in sorted(later)[: max(0, room)]:
            ack = after.random() < 0.5
            text = after.choice(ACKS[lang]) if ack else message_text(after, lang, svc, repo)
            out.append(Post(round(new_at, 3), t, posted, after.choice(people), text))
            posted += 1
    return out


def describe(workload: Workload) -> str:
    """One paragraph about the workload (sizes, languages, request kinds and slices)."""
    asks = workload.asks
    measured = [p for p in workload.threads if not p.warmup]
    warm = len(workload.threads) - len(measured)
    sizes = sorted(p.initial for p in measured)
    by_slice = {s: sum(s in a.slices for a in asks) for s in (FIRST, *SLICES)}
    by_kind = {k: sum(a.kind == k for a in asks) for k in KINDS}
    langs = {lang: sum(p.language == lang for p in measured) for lang in LANGUAGES}
    first = min(a.at for a in asks)
    last = max(a.at for a in asks)
    history = (
        f"after {warm} warm-up threads ({len(workload.warmup_asks)} requests, not counted)"
        if warm
        else "on a fresh database"
    )
    return (
        f"{workload.profile} seed {workload.seed}: {len(measured)} threads of "
        f"{sizes[0]}-{sizes[-1]} messages at the start ({sum(s >= 1500 for s in sizes)} of "
        f"1,500+, {sum(p.requests == 1 for p in measured)} asked about once), "
        f"{len(asks)} requests over {(last - first) / 3600:.1f} h simulated, {history}\n"
        f"  languages: {', '.join(f'{k} {v}' for k, v in langs.items())}; requests: "
        f"{', '.join(f'{k} {v}' for k, v in by_kind.items())}\n"
        f"  slices: {', '.join(f'{k} {v}' for k, v in by_slice.items())}"
    )
