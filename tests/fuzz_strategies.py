"""Hypothesis strategies for the API fuzzer (tests/test_fuzz.py): one request strategy per route.

Bodies are built from the validators' own field tables (`validation._JOB_FIELDS`, `_PATCH_FIELDS`,
the `RunRequest` fields a trigger body fills), so a field added there is fuzzed without a change
here. Each body is a valid one; the same with one field set to an odd value of its own type
(NUL, lone surrogates, huge numbers: what passes the type rules and is judged deeper, or stored)
or to a wrong type; the same with a few fields broken, dropped or added; or junk (not JSON, not an
object, nested past any limit). Each request also draws its path ids (real ones of this and the
other project, odd ones), its query, and either a passing method, credential and media type (two
thirds: the body is what gets judged) or odd ones (auth forms, content types, idempotency keys).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

from strait_actors import fsm, tokens
from strait_actors.api import validation
from strait_actors.api.run_filters import RUN_FILTERS
from strait_actors.model import RunRequest
from tests.conftest import SECRET

Strategy = SearchStrategy[Any]
Headers = tuple[tuple[bytes, bytes], ...]


@dataclass(frozen=True)
class Req:
    """One HTTP request as sent: path and query already percent-encoded, headers as bytes."""

    method: str
    path: str
    query: str = ""
    headers: Headers = ()
    body: bytes | None = None

    @property
    def target(self) -> str:
        return f"{self.path}?{self.query}" if self.query else self.path

    def __repr__(self) -> str:
        body = self.body if self.body is None or len(self.body) <= 600 else self.body[:600] + b"...(cut)"
        return f"Req({self.method} {self.target[:600]!r}, headers={list(self.headers)!r}, body={body!r})"


@dataclass
class World:
    """What the fixture set up: the ids the strategies pick from (valid ones reach deeper code)."""

    keys: dict[str, str]  # role -> raw API key: full, read, other (p2), revoked, expired, other_read, pq
    jobs: dict[str, str]  # role -> job id
    disposable_jobs: list[str]  # PATCH/DELETE may change or remove these
    runs: dict[str, list[str]]  # status -> run ids of p1 the fuzzer may act on
    other_runs: list[str]  # runs of p2
    versions: list[tuple[str, str]]  # (job id, version id)
    key_ids: list[str]  # keys the fuzzer may revoke
    batch_ids: list[str]
    endpoints: list[str]  # URLs a fuzzed job may point at (all local: nothing leaves the machine)
    run_tokens: RunTokens  # the SDK plane's runs and their run tokens (api.md §1.6)
    parents: list[str]  # runs of p1 with children (GET /v1/runs/{id}/children)
    event_keys: dict[str, list[str]]  # the keys of the world's event triggers: p1, p2, shared (both)
    chain: list[str]  # a continue-as-new chain of p1, root first (lineage_depth 0 to 10)
    # environments and job groups (migration 0007): p1's, those DELETE may remove, and p2's
    environments: list[str] = dataclasses.field(default_factory=list)
    disposable_environments: list[str] = dataclasses.field(default_factory=list)
    other_environments: list[str] = dataclasses.field(default_factory=list)
    groups: list[str] = dataclasses.field(default_factory=list)  # of disposable jobs only: pause-all is harmless
    # job dependencies (migration 0009) of one disposable job, which DELETE may remove
    dependencies: list[str] = dataclasses.field(default_factory=list)
    dependent_job: str = ""
    disposable_groups: list[str] = dataclasses.field(default_factory=list)
    other_groups: list[str] = dataclasses.field(default_factory=list)

    def all_runs(self) -> list[str]:
        return [r for ids in self.runs.values() for r in ids]


# ----------------------------------------------------------------------------------- run tokens


@dataclass(frozen=True)
class Parked:
    """A run the SDK plane is fuzzed on, as set up: what its run token has to name."""

    run_id: str
    attempt: int
    lease_id: str  # the lease of its dispatch (a run never leased: any uuid, the run has none to match)


class Cycle:
    """The items of a list in turn, one per draw, round and round (`st.builds(Cycle(items))`): each
    gets its turn, where `st.sampled_from` keeps coming back to the first few."""

    def __init__(self, items: list[Any]) -> None:
        self.items = items
        self.i = 0

    def __call__(self) -> Any:
        item = self.items[self.i % len(self.items)]
        self.i += 1
        return item


Credential = tuple[str, list[tuple[bytes, bytes]]]  # (the path's run id, the headers that authenticate)
RUN_TOKEN_TTL = 86400  # minted tokens stay good for a day: the fuzz never meets its own expiry


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt_of(claims: Any, key: str, header: Any = None, digest: Any = hashlib.sha256) -> str:
    """A JWT signed with `key` over any claims and header (bytes as given: not only what PyJWT
    would write). The server's own header (`tokens._HEADER`) unless told."""
    head = _b64(json.dumps(header, separators=(",", ":")).encode()) if header is not None else tokens._HEADER.decode()
    body = _b64(claims if isinstance(claims, bytes) else json.dumps(claims, separators=(",", ":")).encode())
    sig = _b64(hmac.new(key.encode(), f"{head}.{body}".encode(), digest).digest())
    return f"{head}.{body}.{sig}"


def _bearer(token: str | bytes) -> list[tuple[bytes, bytes]]:
    return [(b"Authorization", b"Bearer " + (token if isinstance(token, bytes) else token.encode()))]


@dataclass
class RunTokens:
    """The SDK plane's runs, by pool, and run tokens for them minted with the server's key.

    A pool names runs of one role: `live` ones (executing, or waiting under a parked lease) that
    no fuzzed call may end; pools a route ends one by one (`complete`, `fail`: a route that ends
    or parks runs gets a pool of its own, so that the other routes keep live runs to go deep
    on); `inactive` ones (queued, delayed, terminal, never existing: 409, 410, 404 however right
    the token). A route takes a pool with `RouteSpec(run_token=<pool>)`; `credentials(pool)`
    are (path run id, headers) pairs: `valid` ones (the token the dispatch would carry) and
    `refused` ones (§1.6 row by row: header forms, signature, claims, another run's token, stale
    attempt or lease), built once here."""

    key: str
    pools: dict[str, list[Parked]]
    valid_tokens: dict[str, str] = dataclasses.field(default_factory=dict)
    # pools whose runs the first good call parks: their right tokens are dealt in turn (hypothesis
    # draws the first items of a list far more often than the rest: they would be parked at once,
    # and the calls after them only meet a 409)
    dealt: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        for runs in self.pools.values():
            for p in runs:
                self.valid_tokens[p.run_id] = self.mint(p)

    def mint(
        self, p: Parked, *, attempt: int | None = None, lease_id: str | None = None, key: str | None = None
    ) -> str:
        return tokens.mint_run_token(
            key or self.key,
            p.run_id,
            p.attempt if attempt is None else attempt,
            lease_id or p.lease_id,
            expires_at=None,
            timeout_secs=RUN_TOKEN_TTL,
        )

    def run_ids(self, *pools: str) -> list[str]:
        return [p.run_id for name in pools for p in self.pools[name]]

    def valid(self, pool: str) -> list[Credential]:
        return [(p.run_id, _bearer(self.valid_tokens[p.run_id])) for p in self.pools[pool]]

    def claims(self, p: Parked, **changes: Any) -> dict[str, Any]:
        now = int(time.time())
        base = {
            "iss": tokens.ISSUER,
            "sub": p.run_id,
            "attempt": p.attempt,
            "iat": now,
            "exp": now + RUN_TOKEN_TTL,
            "lease_id": p.lease_id,
        }
        for name, value in changes.items():
            if value is _DROP:
                base.pop(name, None)
            else:
                base[name] = value
        return base

    def refused(self, pool: str) -> list[Credential]:
        """Every way a token can be wrong for a run of `pool` (and a few odd ones the server may
        take: PyJWT's path for a header that is not ours byte for byte)."""
        runs = self.pools[pool]
        p, q = runs[0], runs[-1]
        token = self.valid_tokens[p.run_id]
        k = self.key
        out: list[Credential] = [
            # the header
            (p.run_id, []),
            (p.run_id, [(b"Authorization", b"")]),
            (p.run_id, [(b"Authorization", b"Bearer")]),
            (p.run_id, [(b"Authorization", b"Bearer ")]),
            (p.run_id, [(b"Authorization", token.encode())]),
            (p.run_id, [(b"Authorization", b"bearer " + token.encode())]),
            (p.run_id, [(b"Authorization", b"BEARER  " + token.encode())]),
            (p.run_id, [(b"Authorization", b"Bearer\t" + token.encode())]),
            (p.run_id, [(b"Authorization", b"Basic " + token.encode())]),
            (p.run_id, [(b"Authorization", b"Bearer " + token.encode() + b" x")]),
            (p.run_id, [(b"Authorization", b"Bearer " + token.encode() + b"\xff")]),
            (p.run_id, [(b"Authorization", b"Bearer \xff" + token.encode()[1:])]),
            (p.run_id, [(b"Authorization", "Bearer é".encode() + token.encode())]),
            (p.run_id, [(b"Authorization", b"Bearer " + token.encode() + b".")]),
            (p.run_id, [(b"Authorization", b"Bearer " + token.encode()[:-3])]),
            (p.run_id, [(b"Authorization", b"Bearer " + token.encode() + b"==")]),
            (p.run_id, [(b"Authorization", b"Bearer " + token.encode().replace(b".", b"..", 1))]),
            (p.run_id, [(b"Authorization", b"Bearer " + SECRET.encode())]),
            (p.run_id, [(b"X-Internal-Secret", SECRET.encode())]),
            (p.run_id, [(b"X-Run-Token", token.encode())]),
            (p.run_id, [*_bearer(token), (b"Authorization", b"Bearer nope")]),
            (p.run_id, [(b"Authorization", b"Bearer nope"), *_bearer(token)]),
            (p.run_id, _bearer("a.b.c")),
            (p.run_id, _bearer("..")),
            (p.run_id, _bearer("." * 3000)),
            (p.run_id, _bearer(tokens._HEADER.decode() + ".%%%.abc")),
            (p.run_id, _bearer(tokens._HEADER.decode() + ".e30")),
            (p.run_id, _bearer(tokens._HEADER.decode() + "." + "A" * 3000 + ".abc")),
            # the signature, the algorithm
            (p.run_id, _bearer(self.mint(p, key="not-the-key-0123456789abcdef"))),
            (p.run_id, _bearer(token.rsplit(".", 1)[0] + "." + self.valid_tokens[q.run_id].rsplit(".", 1)[1])),
            (p.run_id, _bearer(token.rsplit(".", 1)[0] + ".")),
            (p.run_id, _bearer(jwt_of(self.claims(p), k, {"alg": "none", "typ": "JWT"}).rsplit(".", 1)[0] + ".")),
            (p.run_id, _bearer(jwt_of(self.claims(p), k, {"alg": "HS512", "typ": "JWT"}, hashlib.sha512))),
            (p.run_id, _bearer(jwt_of(self.claims(p), k, {"alg": "RS256", "typ": "JWT"}))),
            (p.run_id, _bearer(jwt_of(self.claims(p), k, {"alg": "HS256"}))),  # PyJWT's path: taken
            (p.run_id, _bearer(jwt_of(self.claims(p), k, {"typ": "JWT", "alg": "HS256"}))),  # taken too
            (p.run_id, _bearer(jwt_of(self.claims(p), k, {"alg": "HS256", "typ": "JWT", "kid": "../x"}))),
            (p.run_id, _bearer(jwt_of(self.claims(p), k, ["HS256"]))),
            (p.run_id, _bearer(jwt_of(self.claims(p), k, {"alg": "HS256", "crit": ["exp"]}))),
            # the claims, signed right
            *[
                (p.run_id, _bearer(jwt_of(self.claims(p, **{name: value}), k)))
                for name, values in _ODD_CLAIMS.items()
                for value in values
            ],
            *[(p.run_id, _bearer(jwt_of(body, k))) for body in _ODD_CLAIM_BODIES],
            (p.run_id, _bearer(jwt_of(self.claims(p, exp=10**30), k, {"alg": "HS256"}))),
            (p.run_id, _bearer(jwt_of(self.claims(p, exp=1e400), k, {"alg": "HS256"}))),
            (p.run_id, _bearer(jwt_of(self.claims(p, iat=1e400, nbf=10**30), k, {"alg": "HS256"}))),
            (p.run_id, _bearer(jwt_of(self.claims(p, attempt=2**70), k, {"alg": "HS256"}))),
            (p.run_id, _bearer(jwt_of(self.claims(p, sub="\ud800"), k, {"alg": "HS256"}))),
            (p.run_id, _bearer(jwt_of(self.claims(p, attempt=True), k, {"alg": "HS256"}))),
            (
                p.run_id,
                _bearer(jwt_of(json.dumps(self.claims(p))[:-1].encode() + b',"sub":"other"}', k)),
            ),  # a duplicate claim
            # another run's token, stale attempts and leases
            (q.run_id, _bearer(token)),
            (p.run_id, _bearer(self.valid_tokens[q.run_id])),
            (p.run_id.upper(), _bearer(token)),
            (p.run_id, _bearer(jwt_of(self.claims(p, sub=p.run_id.upper()), k))),
            (p.run_id, _bearer(self.mint(p, attempt=p.attempt + 1))),
            (p.run_id, _bearer(self.mint(p, attempt=max(1, p.attempt - 1)))),
            (p.run_id, _bearer(self.mint(p, lease_id=str(uuid.uuid4())))),
            (p.run_id, _bearer(jwt_of(self.claims(p, lease_id=_DROP), k))),
            (p.run_id, _bearer(jwt_of(self.claims(p, lease_id=p.lease_id.upper()), k))),
        ]
        stale = [r for r in runs if r.attempt > 1]
        out += [(r.run_id, _bearer(self.mint(r, attempt=a))) for r in stale[:2] for a in range(1, r.attempt)]
        return out

    def elsewhere(self) -> list[Credential]:
        """Right tokens of the runs the SDK plane must turn away: not active (409 on a write), ended
        (410), never existing (404), a sub that is not a uuid (404 when the path says the same)."""
        inactive = set(self.run_ids("inactive"))
        out = [(r, _bearer(t)) for r, t in self.valid_tokens.items() if r in inactive]
        ghost = Parked(str(uuid.uuid4()), 1, str(uuid.uuid4()))
        out.append((ghost.run_id, _bearer(self.mint(ghost))))
        for sub in ("not-a-uuid", "0", "x" * 300):
            out.append((sub, _bearer(jwt_of(self.claims(ghost, sub=sub), self.key))))
        return out

    def credentials(self, pool: str) -> tuple[Strategy, Strategy]:
        """(deep, surface): deep ones mostly carry the right token of a run of the pool; surface
        ones mostly a refused one, or the right one on an odd path."""
        valid = st.builds(Cycle(self.valid(pool))) if pool in self.dealt else st.sampled_from(self.valid(pool))
        refused = st.sampled_from(self.refused(pool))
        elsewhere = st.sampled_from(self.elsewhere())
        # the right token on a path that names its run in another form, or names none
        odd_path = st.sampled_from(
            [(form, auth) for run_id, auth in self.valid(pool)[:2] for form in _id_forms(run_id)]
            + [(odd, self.valid(pool)[0][1]) for odd in ODD_IDS]
        )
        deep = weighted((14, valid), (2, refused), (2, elsewhere))
        surface = weighted((3, valid), (6, refused), (2, elsewhere), (2, odd_path))
        return deep, surface


class _Drop:
    """A claim left out."""


_DROP = _Drop()
_ODD_CLAIMS: dict[str, list[Any]] = {
    "iss": [_DROP, "", "strait:other", None, ["strait:run-token"]],
    "exp": [_DROP, None, "9999999999", True, 0, -1, int(time.time()) - 5, 1e300, 2**63, float(int(time.time()) + 3600)],
    "sub": [_DROP, "", None, 5, ["x"], "00000000-0000-0000-0000-000000000000"],
    "attempt": [_DROP, 0, -1, None, "1", 1.0, 1.5, True, 2**31, 2**63 - 1, 2**64 - 1, [1], {"n": 1}],
    "lease_id": [None, "", "not-a-uuid", 5, "{" + "0" * 32 + "}", str(uuid.uuid4())],
}
_ODD_CLAIM_BODIES: list[Any] = [[], "claims", None, 5, {}, b"", b"not json", b"{", b'{"iss":"strait:run-token"}']


# ----------------------------------------------------------------------------------- odd values

LONG = "x" * 5000
ODD_STRINGS = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\ud800",
    "a\udfffb",
    "\ud83d\ude00",
    "é",
    "名前",
    "😀",
    "\u202e\u0301",
    "\ufeff",
    "\uffff",
    "\r\n",
    "\t",
    "../..",
    "%00",
    "' OR 1=1 --",
    "{{payload.x}}",
    "null",
    "true",
    "0",
    "-1",
    "NaN",
    "Infinity",
    "1e308",
    "-0",
    "ver_",
    "strait_",
    LONG,
    "é" * 3000,
]
HUGE_INTS = [0, -1, 1, 2**31 - 1, 2**31, -(2**31) - 1, 2**63 - 1, 2**63, -(2**63) - 1, 2**64, 10**30, 10**400]
ODD_FLOATS = [1e308, -1e308, 1.7976931348623157e308, 5e-324, -0.0, 0.5, 1e-7, 123456789.123456789]


def weighted(*pairs: tuple[int, Strategy]) -> Strategy:
    """One of the strategies, each `n` times as likely (`st.one_of` folds repeated branches into
    one, so repeating a branch there does not weigh it). Curated pools carry most of the weight:
    one choice each, where free-form text or JSON costs hypothesis dozens (and the fuzz has a
    wall-time budget); the free-form share still finds what no pool lists."""
    strategies = [s for n, s in pairs if n > 0]
    index = st.sampled_from([i for i, (n, _) in enumerate(p for p in pairs if p[0] > 0) for _ in range(n)])

    @st.composite
    def pick(draw: st.DrawFn) -> Any:
        return draw(strategies[draw(index)])

    return pick()


# what PostgreSQL text and jsonb cannot hold (§0.3: stripped or replaced before storage)
UNSTORABLE = ["\x00", "a\x00b", "\ud800", "a\udfffb", "\udbff\x00", "\ud83d"]
odd_text: Strategy = weighted(
    (5, st.sampled_from(ODD_STRINGS)),
    (3, st.sampled_from(UNSTORABLE)),
    (1, st.text(max_size=16)),
    (1, st.text(st.characters(codec=None, exclude_categories=()), max_size=8)),  # lone surrogates too
)
numbers: Strategy = weighted(
    (4, st.sampled_from(HUGE_INTS + ODD_FLOATS)),
    (1, st.integers()),
    (1, st.floats(allow_nan=False, allow_infinity=False)),
    (1, st.sampled_from([float("nan"), float("inf"), float("-inf")])),  # json.dumps writes NaN/Infinity
)
JSON_POOL: list[Any] = [
    None,
    True,
    0,
    -0.0,
    -1,
    2**31,
    2**63,
    10**400,
    -(10**400),
    1e308,
    5e-324,
    "",
    "\x00",
    "\ud800",
    "é",
    LONG,
    "9" * 4000,
    [],
    {},
    [1, "a", None],
    {"": None},
    {"\x00": "\udfff"},
    {"a": {"b": {"c": [1, 2, {"d": None}]}}},
    [[[[[[[[[[[]]]]]]]]]]],
    {"n": 1},
    {"n": "1"},
    {"n": 10**400},
    {"n": 1.5},
    {"n": 1, "f": 10**400},
    {"n": 1, "f": 1e300},
    {"n": 1, "f": -(10**30) - 1},
    {"n": 1, "s": "\ud800"},
    {"n": 1, "x-\ud800": 5},
    {"n": 1, "\ud800": 1},
    {"n": 1, "tree": {"kids": [{"kids": [{"v": 10**400}]}]}},
    {"n": 1, "extra": True},
    list(range(100)),
    {f"k{i}": i for i in range(50)},
    {"$ref": "#"},
]
json_values: Strategy = weighted(
    (5, st.sampled_from(JSON_POOL)),
    (
        1,
        st.recursive(
            st.one_of(st.none(), st.booleans(), numbers, odd_text),
            lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(odd_text, inner, max_size=3)),
            max_leaves=6,
        ),
    ),
)
wrong_types: Strategy = st.one_of(
    st.none(), st.booleans(), numbers, odd_text, st.just([]), st.just({}), st.just([1, "a"]), st.just({"a": [1]})
)


def str_maps(max_keys: int = 3) -> Strategy:
    """string -> string maps (tags, metadata): mostly well-formed ones with odd strings in them,
    which pass validation and reach the database; some over the limits, some of the wrong type."""
    keys = weighted((2, st.sampled_from(["env", "team", "k", "a" * 64, "a" * 65, ""])), (2, odd_text))
    values = weighted((2, st.sampled_from(["prod", "v", "x" * 256, "x" * 257])), (2, odd_text))
    return weighted(
        (6, st.dictionaries(keys, values, min_size=1, max_size=max_keys)),
        (1, st.just({f"k{i}": "v" for i in range(21)})),  # over the 20-key limit
        (1, st.dictionaries(keys, wrong_types, min_size=1, max_size=2)),
    )


def _rfc3339(delta: timedelta) -> str:
    return (datetime.now(UTC) + delta).isoformat().replace("+00:00", "Z")


timestamps: Strategy = st.one_of(
    st.sampled_from([timedelta(hours=1), timedelta(minutes=5), timedelta(days=29)]).map(_rfc3339),
    st.sampled_from([timedelta(hours=-1), timedelta(days=31), timedelta(days=-40000)]).map(_rfc3339),
    st.sampled_from(
        [
            "garbage",
            "",
            "2026-02-30T00:00:00Z",
            "2026-01-01",
            "2026-01-01T00:00:00",
            "9999-12-31T23:59:59.999999Z",
            "0001-01-01T00:00:00Z",
            "2099-01-01T00:00:00.123456789Z",
            "2099-01-01t00:00:00z",
            "2099-01-01T00:00:00+14:00",
            "2099-01-01T00:00:00-23:59",
            "2099-01-01T00:00:00+24:00",
            "2099-01-01T24:00:00Z",
            "2099-01-01 00:00:00Z",
            "+2099-01-01T00:00:00Z",
        ]
    ),
    wrong_types,
)


# ----------------------------------------------------------------------------- bodies from validators


def local_url(world: World) -> Strategy:
    odd = [
        "ftp://127.0.0.1/x",
        "http://",
        "http://[::1",
        "http://127.0.0.1:99999/",
        "http://127.0.0.1:abc/",
        "http://a b.invalid/",
        "javascript:alert(1)",
        "http://例え.invalid/",
        "http://127.0.0.1/" + "a" * 3000,
        "https://user:pass@fuzz.invalid/x",
        "http://0x7f.1/",
        "http://127.1/",
        "//fuzz.invalid/",
        "http://fuzz.invalid/\x00",
    ]
    return st.one_of(st.sampled_from(world.endpoints), st.sampled_from(odd), odd_text)


def _str_value(name: str, spec: validation._Str, world: World) -> Strategy:
    if name.endswith("url"):
        return local_url(world)
    if spec.choices:
        return st.one_of(st.sampled_from(sorted(spec.choices)), st.just("HTTP"), odd_text)
    if name in ("cron", "execution_window_cron"):
        crons = ["* * * * *", "0 * * * *", "61 * * * *", "@daily", "@every 5m", "* * * * * *", "0 0 31 2 *"]
        return st.one_of(st.sampled_from(crons), odd_text)
    if name == "timezone":
        zones = ["UTC", "Europe/Paris", "Mars/Olympus", "America", "../etc/passwd", "/etc/localtime", "Etc/GMT+14"]
        return st.one_of(st.sampled_from(zones), odd_text)
    if name.endswith("secret"):
        return st.one_of(st.just("s" * 16), st.just("s" * 15), st.just("s" * 4097), odd_text)
    if spec.slug:
        return st.one_of(st.from_regex(r"[a-z0-9][a-z0-9._-]{0,12}", fullmatch=True), st.just("a" * 129), odd_text)
    if name in ("environment_id", "group_id"):  # p1's (binds the job), p2's (not found), odd ones
        mine, theirs = (
            (world.environments, world.other_environments)
            if name == "environment_id"
            else (world.groups, world.other_groups)
        )
        return st.one_of(st.sampled_from([*mine, *theirs, "", "p1"]), st.uuids().map(str), odd_text)
    edge = [st.just("a" * spec.max_len), st.just("a" * (spec.max_len + 1))] if spec.max_len else []
    return st.one_of(st.sampled_from(["p1", "p2", "fz", "Job"]), *edge, odd_text)


def _int_value(spec: validation._Int) -> Strategy:
    hi = spec.hi if spec.hi is not None else validation.MAX_TIMEOUT_SECS
    edges = [spec.lo - 1, spec.lo, spec.lo + 1, hi - 1, hi, hi + 1]
    return weighted((3, st.sampled_from(edges)), (1, st.sampled_from(HUGE_INTS)))


SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "n": {"type": "integer", "minimum": -1_000_000},
        "f": {"type": "number", "maximum": 1e300, "multipleOf": 0.5},
        "s": {"type": "string", "maxLength": 64, "pattern": "^[a-z0-9 ]*$"},
        "e": {"enum": ["a", "b", None, 1]},
        "arr": {"type": "array", "items": {"type": "integer"}, "maxItems": 8, "uniqueItems": True},
        "tree": {"$ref": "#/$defs/node"},
    },
    "required": ["n"],
    "patternProperties": {"^x-": {"type": "string"}},
    "additionalProperties": False,
    "$defs": {
        "node": {
            "type": "object",
            "properties": {"v": {"type": "integer"}, "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
        }
    },
}

schemas: Strategy = st.one_of(
    st.just(SCHEMA),
    st.sampled_from(
        [
            {"type": "object"},
            {"$ref": "#"},
            {"$ref": "#/$defs/missing"},
            {"$ref": "http://127.0.0.1:1/schema"},
            {"type": "nope"},
            {"type": 5},
            {"pattern": "("},
            {"pattern": "\ud800"},
            {"properties": []},
            {"minimum": "x"},
            {"multipleOf": 0},
            {"multipleOf": 1e-308},
            {"$schema": 5},
            {"$schema": "http://json-schema.org/draft-04/schema#", "type": "object"},
            {"enum": []},
            {"patternProperties": {"(": {}}},
            {"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"},
            {"allOf": [{"$ref": "#"}]},
            {"format": "email"},
            {"$dynamicRef": "#meta"},
            {"$id": "http://127.0.0.1:1/", "$ref": "other"},
        ]
    ),
    json_values,
)


def _field_strategy(name: str, spec: Any, world: World) -> Strategy:
    if isinstance(spec, validation._Str):
        return _str_value(name, spec, world)
    if isinstance(spec, validation._Int):
        return _int_value(spec)
    kinds: dict[str, Strategy] = {
        "bool": st.booleans(),
        "str_map": str_maps(),
        "int_list": st.one_of(
            st.lists(st.sampled_from([1, 5, 0, -1, 2**31, 3600]), max_size=4),
            st.just(list(range(1, 102))),
        ),
        "json": schemas if name.endswith("schema") else json_values,
        "rate_keys": st.one_of(
            st.lists(
                st.fixed_dictionaries(
                    {
                        "key": st.one_of(st.sampled_from(["openai", "k", "a b", "", "x" * 129]), odd_text),
                        "max": st.sampled_from([1, 1000, 0, -1, 2**31, True, "1", 1.5]),
                        "window_secs": st.sampled_from([1, 60, 30 * 86_400, 30 * 86_400 + 1, 0, None]),
                    },
                    optional={"extra": st.just(1)},
                ),
                max_size=3,
            ),
            st.just([{"key": f"k{i}", "max": 1000, "window_secs": 1} for i in range(21)]),
            json_values,
        ),
    }
    if spec not in kinds:
        raise AssertionError(f"validation field {name!r} has kind {spec!r}: teach the fuzzer a strategy for it")
    return kinds[spec]


def job_fields(world: World, *, patch: bool) -> dict[str, Strategy]:
    table = validation._PATCH_FIELDS if patch else validation._JOB_FIELDS
    return {name: _field_strategy(name, spec, world) for name, spec in table.items()}


def valid_job(world: World) -> Strategy:
    return st.fixed_dictionaries(
        {
            "project_id": st.just("p1"),
            "name": st.sampled_from(["Job", "Fuzz job", "名前"]),
            "slug": st.uuids().map(lambda u: f"fz-{u.hex[:12]}"),
            "endpoint_url": st.sampled_from(world.endpoints),
        },
        optional={
            "execution_mode": st.sampled_from(["http", "worker"]),
            "payload_schema": st.just(SCHEMA),
            "max_attempts": st.integers(1, 5),
            "timeout_secs": st.integers(1, 30),
            "tags": st.just({"env": "fuzz"}),
            "enabled": st.booleans(),
        },
    )


valid_payload: Strategy = st.fixed_dictionaries(
    {"n": st.integers(-1000, 10**6)},
    optional={
        "f": st.sampled_from([0.5, -3.0, 1e6, 2**53, 0.25, 1e300, 10**400]),
        "s": st.sampled_from(["", "abc", "a b 1"]),
        "e": st.sampled_from(["a", "b", None, 1]),
        "arr": st.lists(st.integers(0, 99), max_size=5, unique=True),
        "tree": st.recursive(
            st.fixed_dictionaries({"v": st.integers(0, 9)}),
            lambda kid: st.fixed_dictionaries({"v": st.integers(0, 9), "kids": st.lists(kid, max_size=2)}),
            max_leaves=4,
        ),
        "x-note": st.sampled_from(["hi", "é", 5]),
        "x-\ud800": st.sampled_from(["hi", 5]),
    },
)

# One strategy per annotation of RunRequest: a field added there fails here until it has one.
_TRIGGER_KINDS: dict[str, Callable[[str], Strategy]] = {
    "Any": lambda _: weighted((4, valid_payload), (2, json_values), (1, st.just({"n": 10**400}))),
    "dict[str, str]": lambda _: str_maps(),
    "datetime | None": lambda _: timestamps,
    "int": lambda _: st.one_of(st.integers(-1, 11), st.sampled_from(HUGE_INTS)),
    "int | None": lambda _: st.one_of(
        st.sampled_from([0, 1, 60, validation.MAX_TTL_SECS, validation.MAX_TTL_SECS + 1]), wrong_types
    ),
    "bool": lambda _: st.booleans(),
    "str | None": lambda name: st.one_of(
        st.uuids().map(lambda u: f"{name}-{u.hex[:6]}"),
        st.just("k" * validation.MAX_KEY_LEN),
        st.just("k" * (validation.MAX_KEY_LEN + 1)),
        odd_text,
        wrong_types,
    ),
}


def trigger_fields() -> dict[str, Strategy]:
    out: dict[str, Strategy] = {}
    for f in dataclasses.fields(RunRequest):
        kind = str(f.type)
        if kind not in _TRIGGER_KINDS:
            raise AssertionError(f"RunRequest.{f.name} has type {kind!r}: teach the fuzzer a strategy for it")
        out[f.name] = _TRIGGER_KINDS[kind](f.name)
    return out


valid_trigger: Strategy = st.fixed_dictionaries(
    {"payload": valid_payload},
    optional={
        "dry_run": st.booleans(),
        "priority": st.integers(0, 10),
        "tags": st.just({"env": "fuzz"}),
        "scheduled_at": st.just(timedelta(hours=2)).map(_rfc3339),
        "idempotency_key": st.sampled_from(["k1", "k2", "k3"]),
        "ttl_secs": st.sampled_from([0, 60]),
        "metadata": st.just({"m": "1"}),
    },
)


_KINDS = st.sampled_from(["valid", "one", "one", "one", "one", "few", "few", "junk"])
_OPS = st.sampled_from(["set", "set", "set", "wrong", "drop", "null", "extra"])


def broken(valid: Strategy, fields: dict[str, Strategy]) -> Strategy:
    """A valid body; the same with one field set to an odd value of its own type (so that it passes
    the type rules and is judged by the deeper ones, or stored), or to a wrong type; the same
    with 2-3 fields broken, dropped, nulled or added; or a random JSON value. `fields` holds each
    field's values of the right type (odd ones among them): wrong types are added here.
    (Every strategy is built once, outside the draw: building one costs more than drawing it.)"""
    names = st.sampled_from(sorted(fields))
    junk = st.one_of(json_values, st.dictionaries(names, json_values))
    typed_or_wrong = {name: weighted((4, value), (1, wrong_types)) for name, value in fields.items()}
    count = st.sampled_from([2, 2, 3])

    @st.composite
    def draw_body(draw: st.DrawFn) -> Any:
        kind = draw(_KINDS)
        if kind == "junk":
            return draw(junk)
        body = dict(draw(valid))
        if kind == "one":
            name = draw(names)
            body[name] = draw(typed_or_wrong[name])
        for _ in range(draw(count) if kind == "few" else 0):
            op, name = draw(_OPS), draw(names)
            if op == "set":
                body[name] = draw(fields[name])
            elif op == "wrong":
                body[name] = draw(wrong_types)
            elif op == "drop":
                body.pop(name, None)
            elif op == "null":
                body[name] = None
            else:
                body[draw(odd_text)] = draw(json_values)
        return body

    return draw_body()


# ----------------------------------------------------------------------------------- raw bodies


def _nest(depth: int, open_: bytes = b"[", close: bytes = b"]") -> bytes:
    return open_ * depth + close * depth


RAW_BODIES = [
    b"",
    b" ",
    b"{",
    b"[",
    b"[]",
    b"[1,2]",
    b"null",
    b"true",
    b"0",
    b"-0",
    b"1e400",
    b'"x"',
    b"{}",
    b'{"a":1,"a":2}',
    b'{"\\ud800":1,"\\ud800":2}',
    b"\xef\xbb\xbf{}",
    '{"payload": {"n": 1}}'.encode("utf-16"),
    b"\xff\xfe\x00",
    b'{"name":"\xff"}',
    b'{"name":"\xed\xa0\x80"}',
    b"NaN",
    b'{"payload":{"n":NaN}}',
    b'{"payload":{"n":-Infinity}}',
    b'{"payload":{"n":' + b"9" * 5000 + b"}}",
    b'{"payload":{"n":1' + b"0" * 400 + b"}}",
    b'{"payload":{"n":1,"f":1e-400}}',
    b'{"payload":{"n":1,"f":-0.0}}',
    b'{"payload":{"n":1,"f":1e400}}',
    b'{"payload":"\\u0000\\ud800"}',
    b'{"payload":{"\\u0000":"\\udfff"}}',
    b"a=1&b=2",
    b'--zz\r\nContent-Disposition: form-data; name="a"\r\n\r\n1\r\n--zz--',
    b"\x00" * 8,
    b'{"payload":' + _nest(100_000) + b"}",
    _nest(1000),
    b'{"a":' * 999 + b"1" + b"}" * 999,
    b'{"payload":{"n":1,"tree":' + b'{"kids":[' * 400 + b"]}" * 400 + b"}}",
    b'{"items":[' + b'{"payload":{"n":1}},' * 600 + b"{}]}",
    b'{"items":[' + b"1," * 10 + b"1]}",
    b'{"run_ids":["' + b'x","' * 10 + b'y"]}',
    b'{"run_ids":'
    + b'["00000000-0000-0000-0000-000000000000"'
    + b',"00000000-0000-0000-0000-000000000000"' * 600
    + b"]}",
    b'{"name":"' + b"a" * (1024 * 1024 + 16) + b'"}',  # over the body limit
]
DEEP_PAYLOADS = [b'{"payload":' + _nest(d) + b"}" for d in (200, 255, 256, 257, 500, 900, 990, 1100)] + [
    b'{"payload":' + b'{"a":' * d + b"1" + b"}" * d + b"}" for d in (200, 256, 300, 600, 900, 980)
]


_ENCODINGS = st.sampled_from(["ascii", "ascii", "ascii", "utf8", "spaced"])


def _encode(value: Any, how: str) -> bytes:
    """A JSON value as bytes: escaped (lone surrogates as \\udxxx), raw UTF-8, or invalid UTF-8."""
    text = json.dumps(value, ensure_ascii=how != "utf8", indent=2 if how == "spaced" else None)
    return text.encode("utf-8", "surrogatepass")


def encoded(values: Strategy) -> Strategy:
    return st.builds(_encode, values, _ENCODINGS)


def bodies(values: Strategy) -> Strategy:
    return weighted((8, encoded(values)), (1, st.sampled_from(RAW_BODIES)), (1, st.sampled_from(DEEP_PAYLOADS)))


# --------------------------------------------------------------------------------------- headers


def header_value(raw: bytes) -> bytes:
    """Bytes a client can put in a header (h11 refuses CR, LF, NUL and edge whitespace)."""
    return bytes(b for b in raw if b == 9 or 32 <= b < 127 or b >= 128).strip(b" \t")


HEADER_POOL = [b"x", b"\xff\xfe", "é".encode(), "名前".encode(), b"\xed\xa0\x80", b"a" * 4000, b"%00", b"-1", b"a, b"]
header_text: Strategy = weighted(
    (5, st.sampled_from(HEADER_POOL)),
    (1, st.binary(max_size=24).map(header_value)),
    (1, odd_text.map(lambda s: header_value(s.encode("utf-8", "surrogatepass")))),
)


def auth_headers(world: World) -> Strategy:
    secret = SECRET.encode()

    def key(role: str) -> list[tuple[bytes, bytes]]:
        return [(b"Authorization", b"Bearer " + world.keys[role].encode())]

    good = [(b"Authorization", b"Bearer " + secret)]
    variants: list[list[tuple[bytes, bytes]]] = [
        *[good] * 22,
        *[key("full")] * 5,
        key("read"),
        key("read"),
        key("other"),
        key("other"),
        key("revoked"),
        key("expired"),
        [],
        [(b"Authorization", b"Bearer")],
        [(b"Authorization", b"Bearer strait_" + b"0" * 64)],
        [(b"Authorization", b"Bearer strait_\xff")],
        [(b"Authorization", b"bearer " + secret)],
        [(b"Authorization", b"Basic " + secret)],
        [(b"Authorization", b"Bearer " + secret + b" extra")],
        [(b"Authorization", b"Bearer " + secret + b"\xff")],
        [(b"Authorization", b"Bearer  " + secret)],
        [(b"X-Internal-Secret", secret)],
        [(b"X-Internal-Secret", b"wrong-secret-000000"), *good],
        [(b"X-Internal-Secret", b"")],
        [*good, (b"Authorization", b"Bearer nope")],
    ]
    return weighted(
        (12, st.sampled_from(variants)),
        (1, header_text.map(lambda v: [(b"Authorization", b"Bearer " + v)])),
        (1, header_text.map(lambda v: [(b"Authorization", v)])),
    )


PROJECT_HEADERS: list[list[tuple[bytes, bytes]]] = [
    *[[(b"X-Project-Id", b"p1")]] * 8,
    [],
    [],
    [(b"X-Project-Id", b"p2")],
    [(b"X-Project-Id", b"p1 p2")],
    [(b"X-Project-Id", b"nope")],
    [(b"X-Project-Id", b"p1\xff")],
    [(b"X-Project-Id", b"a" * 4000)],
]
ACCEPTS = [None, b"application/json", b"*/*", b"application/json;q=0.5, text/html", b"application/*"]
ODD_ACCEPTS = [b"text/html", b"text/*", b"application/xml", b"*", b"application/json;q=0"]
CONTENT_TYPES = [
    *[b"application/json"] * 20,
    b"application/json; charset=utf-8",
    b"APPLICATION/JSON",
    None,
    b"text/plain",
    b"application/x-www-form-urlencoded",
    b"multipart/form-data; boundary=zz",
    b"application/jsonx",
    b"application/json;;;",
]
EXTRA_HEADERS = [
    b"Idempotency-Key",
    b"X-Idempotency-Key",
    b"X-Actor-Id",
    b"X-Actor-Email",
    b"Traceparent",
    b"Tracestate",
    b"X-Request-Id",
    b"X-Project-Id",
    b"Accept-Encoding",
    b"X-SDK-Version",
]


_ACCEPT = weighted((12, st.sampled_from(ACCEPTS)), (1, st.sampled_from(ODD_ACCEPTS)), (1, header_text))
# A real coding (gzip, deflate, br) over a body not so encoded is refused by aiohttp's payload
# decoder: read_json answers 400 (pinned in test_fuzz's FOUND), but aiohttp may also drop the
# keep-alive connection, so the fuzz sends only codings aiohttp ignores.
CODINGS = [b"identity", b"x-custom", b"*", b"chunked", b"gzip2"]
TRACE = b"00-" + b"a" * 32 + b"-" + b"b" * 16 + b"-01"
_EXTRA = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(EXTRA_HEADERS), header_text),
        st.tuples(st.sampled_from(EXTRA_HEADERS), st.sampled_from([b"k1", b"k2", TRACE])),
        st.tuples(st.just(b"Content-Encoding"), st.sampled_from(CODINGS)),
    ),
    max_size=2,
)


def _assemble(*parts: Any) -> Headers:
    auth, project, accept, ctype, extra = parts
    out = [*auth, *project, *extra]
    out += [(name, value) for name, value in ((b"Accept", accept), (b"Content-Type", ctype)) if value is not None]
    return tuple((name, header_value(value)) for name, value in out)


def headers(world: World, has_body: bool) -> Strategy:
    ctype = st.sampled_from(CONTENT_TYPES if has_body else [None] * 12 + CONTENT_TYPES)
    return st.builds(_assemble, auth_headers(world), st.sampled_from(PROJECT_HEADERS), _ACCEPT, ctype, _EXTRA)


# ------------------------------------------------------------------------------ path ids and query


def _quoted(text: str) -> str:
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


ODD_IDS = [
    "not-a-uuid",
    "0",
    "-1",
    "%00",
    "abc%00def",
    "%2F",
    "a%2Fb",
    "..",
    "%2E%2E",
    "%",
    "%zz",
    "%FF",
    "%ED%A0%80",
    "%E5%90%8D",
    "null",
    "x" * 4000,
    "ver_" + "a" * 12,
    "00000000-0000-0000-0000-000000000000",
    "ffffffff-ffff-ffff-ffff-ffffffffffff",
]


def _id_forms(u: str) -> list[str]:
    """Other spellings of an id (a uuid parser takes some of them; the path match should not)."""
    return [u.upper(), "{" + u + "}", "urn:uuid:" + u, u.replace("-", ""), u + "%00", u + "x", u[:-1], u + "%2F"]


def path_ids(valid: list[str], others: list[str] | None = None) -> Strategy:
    forms = [v for u in valid[:3] for v in [u, *_id_forms(u)[:-1]]] if valid else []
    return weighted(
        (12 if valid else 0, st.sampled_from(valid or [""])),
        (2 if others else 0, st.sampled_from(others or [""])),
        (1 if forms else 0, st.sampled_from(forms or [""])),
        (1, st.uuids().map(str)),
        (2, st.sampled_from(ODD_IDS)),
        (1, odd_text.map(_quoted).filter(bool)),
    )


def _cursor(world: World, kind: str) -> Strategy:
    ids = [*world.all_runs()[:3], str(uuid.uuid4())]
    stamps = [_rfc3339(timedelta(0)), "2026-01-01T00:00:00Z", "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59Z"]
    ints = ["1", "0", "-1", "9" * 30, "1.5"]
    tails = {
        "uuid": ids,
        "int": ints,
        "str": ["1", "2", "9" * 30, "x"],
        "seq": [*ints, "2147483647", "2147483648", str(2**63 - 1)],  # an int4 column behind it
        "key": ["answer", "a", "é", "\x00", "\ud800", "k" * 300],
    }[kind]
    return st.one_of(
        st.builds(lambda s, t: f"{s}|{t}", st.sampled_from(stamps), st.sampled_from(tails)),
        st.sampled_from(stamps),
        st.sampled_from(["garbage", "|", "||", "2026-13-01T00:00:00Z", "2026-01-01T00:00:00 05:00", "2026-01-01"]),
        odd_text,
    )


LIMITS = ["1", "2", "50", "100", "101", "0", "-1", "abc", "1e3", "9" * 30, " 5", "٣", "1_0", "", "0x10"]


def query(pairs: dict[str, Strategy]) -> Strategy:
    """0-4 of the route's known parameters (plus odd ones), encoded; sometimes raw odd syntax."""
    names = sorted(pairs)
    pair = weighted(
        *[(3, st.tuples(st.just(n), pairs[n])) for n in names],
        (1, st.tuples(odd_text, odd_text)),
        (1, st.tuples(st.just("project_id"), st.sampled_from(["p1", "p2", "", "nope"]))),
    )

    def encode(items: list[tuple[str, str]]) -> str:
        return "&".join(f"{_quoted(k)}={_quoted(v)}" for k, v in items)

    raw = st.sampled_from(["limit", "limit=", "=x", "&&", "limit=1&limit=abc", "%zz=1", "a=%ED%A0%80", "a=%00", "?"])
    return weighted((8, st.lists(pair, max_size=4).map(encode)), (1, raw))


def list_query(world: World, kind: str = "uuid", **extra: Strategy) -> Strategy:
    return query({"limit": st.sampled_from(LIMITS), "cursor": _cursor(world, kind), **extra})


# values of GET /v1/runs's text filters this world's runs have (any other text is drawn too)
_FILTER_TEXTS = {"execution_mode": ["http", "worker"], "tag_key": ["env"], "tag_value": ["fuzz"], "metadata_key": ["m"]}


def run_filters(world: World) -> dict[str, Strategy]:
    """GET /v1/runs's query, from the handler's own table (`run_filters.RUN_FILTERS`)."""
    statuses = st.one_of(st.sampled_from(sorted(fsm.ALL)), st.sampled_from(["", ",", "queued,nope", "a" * 300]))
    uuids = st.one_of(st.sampled_from(list(world.jobs.values()) + world.batch_ids), st.uuids().map(str), odd_text)
    contains = st.one_of(
        st.sampled_from(['{"n":1}', "[]", "1", "null", '"x"', '{"a":{"b":[1]}}', "{", "1e400", '"\\u0000"']),
        st.sampled_from(['{"a":' * 300 + "1" + "}" * 300, "[" * 2000 + "]" * 2000, '{"n":' + "9" * 500 + "}"]),
        odd_text,
    )
    out: dict[str, Strategy] = {}
    for name, f in RUN_FILTERS.items():
        if f.kind in ("status", "statuses"):
            out[name] = statuses
            if f.kind == "statuses":
                out[f"{name}[]"] = statuses
        elif f.kind == "uuid":
            out[name] = uuids
        elif f.kind == "text":
            out[name] = st.one_of(st.sampled_from(_FILTER_TEXTS.get(name, ["x"])), odd_text)
        elif f.kind == "json":
            out[name] = contains
        else:
            raise AssertionError(f"run filter {name!r} has kind {f.kind!r}: teach the fuzzer a strategy for it")
    return out


# An unknown method ("FUZZ") is refused by aiohttp's HTTP parser before the app sees it: a bare text
# 400 and an ERROR traceback in the log, nothing this app can answer; so only methods it can route.
ODD_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD", "TRACE", "PROPFIND"]


@dataclass(frozen=True)
class RouteSpec:
    """How to fuzz one route: its path parameters, query and body, given the world."""

    params: Callable[[World], dict[str, Strategy]] = lambda w: {}
    query: Callable[[World], Strategy] = lambda w: query({})
    body: Callable[[World], Strategy] | None = None  # None: the route reads no body (junk is sent anyway)
    weight: float = 1.0  # its share of the requests: bodies have more to break than a GET by id
    # the SDK plane: the pool of World.run_tokens its {run_id} and run token come from (together:
    # a token is good for one run only), in place of the management plane's credentials
    run_token: str | None = None
    # headers of the route's own (Last-Event-ID), added to whatever else the request carries
    headers: Callable[[World], Strategy] | None = None


def clean_headers(world: World, has_body: bool) -> Strategy:
    """Credentials and media types that pass, so the odd part of the request is what is judged."""
    secret = (b"Authorization", b"Bearer " + SECRET.encode())
    auth = st.sampled_from(
        [[secret], [secret], [secret], [(b"Authorization", b"Bearer " + world.keys["full"].encode())]]
    )
    project = st.sampled_from([[(b"X-Project-Id", b"p1")]] * 3 + [[]])
    ctype = st.just(b"application/json" if has_body else None)
    return st.builds(_assemble, auth, project, st.sampled_from([None, b"application/json"]), ctype, st.just([]))


# Two thirds of the requests keep method, credentials and media types right, so the gate lets them
# through and the code behind it judges their odd ids, query and body; the rest draw all at random.
MODES = st.sampled_from(["deep", "deep", "surface"])

# X-SDK-Version (§1.6): echoed, and its major version read
SDK_VERSIONS = [
    b"2.0.0",
    b"v2",
    b"1.4.2",
    b"10.1",
    b"legacy",
    b"",
    b"v",
    b"-1",
    b"2" * 64,
    b"2" * 65,
    b"9" * 5000,
    "٣.0".encode(),
    "²".encode(),
    "½.0".encode(),
    b"\xff",
    b"2\x7f",
]
_SDK_EXTRA = st.lists(
    st.one_of(
        st.tuples(st.just(b"X-SDK-Version"), weighted((3, st.sampled_from(SDK_VERSIONS)), (1, header_text))),
        st.tuples(st.sampled_from(EXTRA_HEADERS), header_text),
        st.tuples(st.just(b"Content-Encoding"), st.sampled_from(CODINGS)),
    ),
    max_size=2,
)


def sdk_headers(clean: bool, has_body: bool) -> Strategy:
    """The headers of an SDK call besides its credentials: (project, accept, content type, extra)."""
    if clean:  # what strait-python sends
        ctype = st.just(b"application/json" if has_body else None)
        extra = st.sampled_from([[], [], [], [(b"X-SDK-Version", b"2.1.0")], [(b"X-SDK-Version", b"1.0")]])
        return st.tuples(st.just([]), st.sampled_from([None, b"application/json"]), ctype, extra)
    ctype = st.sampled_from(CONTENT_TYPES if has_body else [None] * 12 + CONTENT_TYPES)
    return st.tuples(st.sampled_from(PROJECT_HEADERS), _ACCEPT, ctype, _SDK_EXTRA)


def request(method: str, template: str, spec: RouteSpec, world: World) -> Strategy:
    """Requests for one route: mostly its own method (HEAD too for a GET), some other ones."""
    own = st.sampled_from([method] * 3 + ["HEAD"] if method == "GET" else [method])
    methods = weighted((10, own), (1, st.sampled_from(ODD_METHODS)))
    params, queries = spec.params(world), spec.query(world)
    if spec.body is not None:
        body = weighted((8, spec.body(world)), (1, st.none()))
    else:
        body = weighted((6, st.none()), (1, bodies(json_values)))
    odd = {True: headers(world, True), False: headers(world, False)}
    clean = {True: clean_headers(world, True), False: clean_headers(world, False)}
    if spec.run_token is not None:
        deep_creds, surface_creds = world.run_tokens.credentials(spec.run_token)
        creds = {"deep": deep_creds, "surface": surface_creds}
        rest = {(c, b): sdk_headers(c, b) for c in (True, False) for b in (True, False)}
    own_headers = spec.headers(world) if spec.headers is not None else None

    @st.composite
    def draw_request(draw: st.DrawFn) -> Req:
        mode = draw(MODES)
        path = template
        auth: list[tuple[bytes, bytes]] | None = None
        if spec.run_token is not None:
            run_id, auth = draw(creds[mode])
            path = path.replace("{run_id}", run_id)
        for name, ids in params.items():
            path = path.replace("{" + name + "}", draw(ids))
        q = draw(queries)
        # aiohttp's HTTP parser refuses a request line over 8190 bytes before the app sees it (a
        # bare text 400, like an unknown method): keep the line under it
        path, q = path[:6000], q[: max(0, 7000 - min(len(path), 6000))]
        content = draw(body)
        m = draw(own if mode == "deep" else methods)
        if auth is None:
            hdrs = draw((clean if mode == "deep" else odd)[content is not None])
        else:
            hdrs = _assemble(auth, *draw(rest[mode == "deep", content is not None]))
        if own_headers is not None:
            hdrs += tuple((name, header_value(value)) for name, value in draw(own_headers))
        return Req(m, path, q, hdrs, content)

    return draw_request()


# ------------------------------------------------------------- environments and job groups (0007)

VAR_NAMES = ["A", "REGION", "ENDPOINT_URL", "_x", "a1", "1A", "A-B", "", "é", "a" * 128, "a" * 129]


def _variables(w: World) -> Strategy:
    values = st.one_of(st.sampled_from(["", "eu", "v" * 8192, "v" * 8193, "a\x00b", "\ud800"]), odd_text)
    one = st.one_of(
        st.fixed_dictionaries({"ENDPOINT_URL": local_url(w)}),
        st.dictionaries(st.one_of(st.sampled_from(VAR_NAMES), odd_text), st.one_of(values, wrong_types), max_size=4),
    )
    many = st.just({f"V{i}": "v" for i in range(101)})
    return st.one_of(one, many, wrong_types)


def _named_body(w: World, *, environment: bool, patch: bool) -> Strategy:
    name = st.uuids().map(lambda u: f"fz-{u.hex[:10]}")
    optional: dict[str, Strategy] = {"description": st.sampled_from(["d", "", "d" * 2000])}
    fields: dict[str, Strategy] = {
        "name": st.one_of(st.just("n" * 256), odd_text, wrong_types),
        "description": st.one_of(st.just("d" * 2001), odd_text, wrong_types),
        "project_id": st.one_of(st.sampled_from(["p1", "p2", "nope", ""]), odd_text, wrong_types),
    }
    if environment:
        optional |= {
            "slug": st.sampled_from(["stg", "", "a" * 128]),
            "variables": st.sampled_from([{"REGION": "eu"}, {"ENDPOINT_URL": w.endpoints[0]}, {}]),
        }
        fields |= {"slug": st.one_of(st.just("Not A Slug"), odd_text, wrong_types), "variables": _variables(w)}
    required = {} if patch else {"name": name}
    if patch:
        optional["name"] = name
    valid = st.fixed_dictionaries(required, optional=optional)
    return bodies(broken(valid, fields))


def _env_ids(w: World, *extra: list[str]) -> Strategy:
    return path_ids([*w.environments, *(x for e in extra for x in e)], w.other_environments)


def _group_ids(w: World, *extra: list[str]) -> Strategy:
    return path_ids([*w.groups, *(x for e in extra for x in e)], w.other_groups)


def _pause_body(w: World) -> Strategy:
    return bodies(broken(st.fixed_dictionaries({"reason": st.just("fuzz")}), {"reason": odd_text}))


def _paused_projects(w: World) -> dict[str, Strategy]:
    """The project the fuzz pauses and resumes: pz, which holds nothing the other routes need."""
    return {"project_id": path_ids(["pz"], ["nope"])}


# ---------------------------------------------------------------------------------- route table

SCOPES = ["*", "jobs:read", "jobs:write", "jobs:trigger", "runs:read", "runs:write", "api-keys:manage", "dlq:*"]


def _project_body(w: World) -> Strategy:
    valid = st.fixed_dictionaries(
        {"id": st.sampled_from(["p1", "fz-a", "fz-b", "名前"]), "org_id": st.just("o1"), "name": st.just("Fuzz")}
    )
    return bodies(broken(valid, {"id": odd_text, "org_id": odd_text, "name": odd_text}))


def _key_body(w: World) -> Strategy:
    valid = st.fixed_dictionaries(
        {"project_id": st.just("p1"), "name": st.just("k"), "scopes": st.lists(st.sampled_from(SCOPES), min_size=1)},
        optional={"org_id": st.just("o1"), "environment_id": st.just("e1"), "expires_in_days": st.integers(1, 9)},
    )
    fields = {
        "project_id": st.one_of(st.sampled_from(["p1", "p2", "nope"]), odd_text),
        "name": odd_text,
        "scopes": st.one_of(st.lists(st.one_of(st.sampled_from(SCOPES), odd_text), max_size=3), wrong_types),
        "org_id": st.one_of(odd_text, wrong_types),
        "environment_id": st.one_of(odd_text, wrong_types),
        "expires_in_days": st.one_of(st.sampled_from([0, 1, 36500, 36501]), wrong_types),
    }
    return bodies(broken(valid, fields))


def _bulk_body(w: World) -> Strategy:
    item = broken(valid_trigger, trigger_fields())
    valid = st.fixed_dictionaries({"items": st.lists(valid_trigger, min_size=1, max_size=4)})
    items = st.one_of(
        st.lists(item, max_size=5),
        item.map(lambda one: [one] * 501),  # over MAX_BULK_TRIGGER_ITEMS
        wrong_types,
    )
    return bodies(broken(valid, {"items": items}))


def _dlq_body(w: World) -> Strategy:
    some_ids = st.lists(st.sampled_from(w.all_runs() + w.other_runs), min_size=1, max_size=4)
    valid = st.one_of(
        st.fixed_dictionaries({"run_ids": some_ids}),
        st.fixed_dictionaries({"project_id": st.just("p1")}, optional={"limit": st.integers(1, 5)}),
    )
    fields = {
        "run_ids": st.one_of(st.lists(st.one_of(st.uuids().map(str), odd_text, wrong_types), max_size=3), wrong_types),
        "project_id": st.one_of(st.sampled_from(["p1", "p2", "nope"]), odd_text, wrong_types),
        "limit": st.one_of(st.sampled_from([0, 1, 500, 501]), wrong_types),
    }
    return bodies(broken(valid, fields))


def _jobs(w: World, *roles: str) -> list[str]:
    return [w.jobs[r] for r in roles]


TRIGGER_TARGETS = (
    "worker",
    "worker",
    "worker",
    "dead",
    "dead",
    "admission",
    "disabled",
    "looping",
    "ok",
    "debounced",
    "batched",
)


def _weighted_runs(w: World) -> list[str]:
    return [r for status, ids in w.runs.items() for r in ids * (3 if status in ("timed_out", "dead_letter") else 1)]


# --------------------------------------------------------------------------- the SDK plane (§4.9)
# Valid bodies are what strait-python's run context sends (strait/authoring/_run_context_client.py);
# broken() breaks them; each route also gets deep JSON under its own fields (a nesting its parser
# takes that the code behind it may not) and the raw bodies of bodies().


def _deep_fields(*names: str) -> list[bytes]:
    return [
        b'{"' + name.encode() + b'":' + nest + b"}"
        for name in names
        for nest in (_nest(300), _nest(600), _nest(900), b'{"a":' * 500 + b"1" + b"}" * 500)
    ]


def sdk_bodies(valid: Strategy, fields: dict[str, Strategy], deep: tuple[str, ...] = ()) -> Strategy:
    parts = [(8, encoded(broken(valid, fields))), (1, st.sampled_from(RAW_BODIES))]
    if deep:
        parts.append((1, st.sampled_from(_deep_fields(*deep))))
    return weighted(*parts)


RESULT_LIMIT = 64 * 1024  # the fuzz server's MAX_RESULT_SIZE: under the body limit, so a body can pass it
LEVELS = ["debug", "info", "warn", "warning", "error", "WARN", "Info"]
MESSAGES = ["hello", "", "é", "a\x00b", "\ud800", "m" * 65536, "m" * 65537]
small_json: Strategy = weighted((3, valid_payload), (3, json_values), (1, st.just({"big": "v" * 70000})))
short_names = weighted((3, st.sampled_from(["openai", "gpt-4o", "search", "a" * 256, "a" * 257])), (2, odd_text))
counts = weighted((3, st.sampled_from([0, 1, 12, 2**31, 2**63 - 1, 2**63, -1, 10**30])), (1, numbers))


def _log_body(w: World) -> Strategy:
    valid = st.fixed_dictionaries(
        {"level": st.sampled_from(LEVELS), "message": st.sampled_from(MESSAGES[:3])},
        optional={"type": st.sampled_from(["log", "custom"]), "data": st.just({"k": 1})},
    )
    fields = {
        "level": st.one_of(st.sampled_from([*LEVELS, "loud", "", "warn "]), odd_text),
        "message": st.one_of(st.sampled_from(MESSAGES), odd_text),
        "type": st.one_of(st.sampled_from(["log", "progress", "state_change", "t" * 64, "t" * 65]), odd_text),
        "data": weighted((3, st.dictionaries(odd_text, json_values, max_size=3)), (1, json_values)),
    }
    return sdk_bodies(valid, fields, ("data",))


def _progress_body(w: World) -> Strategy:
    percent = st.one_of(st.integers(0, 100), st.floats(0, 100))
    valid = st.fixed_dictionaries(
        {"percent": percent}, optional={"message": st.sampled_from(MESSAGES[:3]), "step": st.just("s1")}
    )
    odd_numbers = [0, 100, 100.0000001, -0.0, 5e-324, -1, 101, 1e308, 2**63, 10**400]
    fields = {
        "percent": weighted((3, st.sampled_from(odd_numbers)), (1, numbers)),
        "message": st.one_of(st.sampled_from(MESSAGES), odd_text),
        "step": st.one_of(st.sampled_from(["s1", 3, 2**64, 10**400, -1]), odd_text),
        "eta_seconds": weighted((3, st.sampled_from([0, 1.5, -1, -0.0, 2**63, 10**400, 1e308])), (1, numbers)),
    }
    return sdk_bodies(valid, fields)


def _complete_body(w: World) -> Strategy:
    valid = st.one_of(st.just({}), st.fixed_dictionaries({"result": valid_payload}))
    result = weighted(
        (4, valid_payload),
        (3, json_values),
        (1, st.sampled_from(["r" * (RESULT_LIMIT - 2), "r" * (RESULT_LIMIT - 1), {"r": "r" * RESULT_LIMIT}])),
    )
    return sdk_bodies(valid, {"result": result}, ("result",))


def _fail_body(w: World) -> Strategy:
    valid = st.fixed_dictionaries({"error": st.sampled_from(["boom", "é", "no good"])})
    fields = {
        "error": st.one_of(st.sampled_from(MESSAGES), odd_text),
        "error_class": st.one_of(st.sampled_from(["transient", "permanent", "c" * 64, "c" * 65]), odd_text),
    }
    return sdk_bodies(valid, fields)


def _checkpoint_body(w: World) -> Strategy:
    valid = st.fixed_dictionaries({"state": valid_payload, "source": st.just("sdk")})
    fields = {
        "state": small_json,
        "source": st.one_of(st.sampled_from(["sdk", "event_trigger", "s" * 64, "s" * 65]), odd_text),
    }
    return sdk_bodies(valid, fields, ("state",))


OUTPUT_KEYS = ["answer", "a", "k" * 256, "k" * 257, "", "a/b", "é", "\x00"]


def _output_body(w: World) -> Strategy:
    valid = st.fixed_dictionaries(
        {"key": st.sampled_from(OUTPUT_KEYS[:3]), "value": valid_payload}, optional={"schema": st.just(SCHEMA)}
    )
    key = st.one_of(st.sampled_from(OUTPUT_KEYS), odd_text)
    fields = {"key": key, "output_key": key, "value": small_json, "schema": schemas}
    return sdk_bodies(valid, fields, ("value", "schema"))


STATE_KEYS = ["cursor", "k1", "é", "a/b", "%", "..", "s" * 256, "s" * 257, "", "\x00", "\ud800", " "]


def _state_body(w: World) -> Strategy:
    valid = st.fixed_dictionaries({"key": st.sampled_from(STATE_KEYS[:5]), "value": json_values})
    fields = {
        "key": st.one_of(st.sampled_from(STATE_KEYS), odd_text),
        "value": weighted((4, small_json), (1, st.sampled_from(["v" * 65534, "v" * 65535, ["v" * 32768] * 2]))),
    }
    return sdk_bodies(valid, fields, ("value",))


def _state_key(w: World) -> Strategy:
    return weighted((4, st.sampled_from([_quoted(k) for k in STATE_KEYS if k])), (1, path_ids([])))


def _annotate_body(w: World) -> Strategy:
    valid = st.fixed_dictionaries(
        {"annotations": st.dictionaries(st.sampled_from(["team", "env", "k"]), st.sampled_from(["a", "b"]), min_size=1)}
    )
    annotations = weighted(
        (4, str_maps()),
        (
            1,
            st.sampled_from(
                [
                    {},
                    {f"k{i}": "v" for i in range(50)},
                    {f"k{i}": "v" for i in range(51)},
                    {"a" * 128: "v"},
                    {"a" * 129: "v"},
                    {"": "v"},
                    {"k": "v" * 1024},
                    {"k": "v" * 1025},
                    {"k": 5},
                    {"k": None},
                    {"traceparent": "x"},
                ]
            ),
        ),
    )
    return sdk_bodies(valid, {"annotations": annotations})


def _usage_body(w: World) -> Strategy:
    valid = st.fixed_dictionaries(
        {"provider": st.just("openai"), "model": st.just("gpt-4o")},
        optional={
            "prompt_tokens": st.integers(0, 10**6),
            "completion_tokens": st.integers(0, 10**6),
            "total_tokens": st.integers(0, 10**6),
            "cost_microusd": st.integers(0, 10**6),
        },
    )
    fields = {
        "provider": short_names,
        "model": short_names,
        "prompt_tokens": counts,
        "completion_tokens": counts,
        "total_tokens": counts,
        "cost_microusd": counts,
    }
    return sdk_bodies(valid, fields)


def _tool_call_body(w: World) -> Strategy:
    valid = st.fixed_dictionaries(
        {"tool_name": st.just("search")},
        optional={
            "input": st.just({"q": "x"}),
            "output": valid_payload,
            "duration_ms": st.integers(0, 10**4),
            "status": st.sampled_from(["success", "error"]),
        },
    )
    fields = {
        "tool_name": short_names,
        "input": small_json,
        "output": small_json,
        "duration_ms": counts,
        "status": st.one_of(st.sampled_from(["success", "error", "s" * 64, "s" * 65]), odd_text),
    }
    return sdk_bodies(valid, fields, ("input", "output"))


# ------------------------------------------------------- durable waits, spawn, continue (§4.9)
# wait-for-event parks the run it names, spawn with await_completion parks its parent: each takes
# a pool of its own (RunTokens), so the other routes keep live runs. Event keys are unique per
# project for a row's whole life: a wait draws fresh ones (WAIT_KEYS, in order), some already
# used (409), some of the world's (409 in p1, new in p1 when p2 holds them), and odd ones.


def _wait_key(i: int) -> str:
    if i % 9 == 4:
        return f"fz/wait/{i}"  # a '/' in the key: the event routes read `{event_key:.+}`
    if i % 13 == 6:
        return f"待つ-{i}"
    if i % 17 == 8:
        return f"fz wait %{i}"  # a space and a percent sign, percent-encoded in the event routes' paths
    return f"fz-wait-{i}"


WAIT_KEYS = [_wait_key(i) for i in range(600)]
SENT_WAIT_KEYS = WAIT_KEYS[:220]  # those the event routes draw (the wait route mints about this many)
# keys the world's triggers hold besides fz-evt-N (valid ones: the routes have to find them again)
WORLD_KEYS = [
    "fz/evt/slash",
    "名前/é",
    "fz evt",
    "fz%41",
    "x/send",
    "fz?q=1#f",
    "k" * 512,
    "é" * 256,  # 512 bytes
    "\x7f-del",  # DEL is not below 0x20: allowed
    "🙂",
    "a//b",
    "/lead",
    "trail/",
    ".",
]
# keys no trigger holds: refused by the key rules (1-512 bytes, nothing below 0x20) or never used
ODD_KEYS = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\x1f",
    "a\nb",
    "\t",
    "k" * 513,
    "é" * 257,  # 514 bytes
    "😀" * 128,  # 512 bytes
    "😀" * 129,
    "k" * 5000,
    "\ud800",
    "a\udfffb",
    "spawn-await:00000000-0000-0000-0000-000000000000",
    "/",
    "a/b/c",
    "%2F",
    "%00",
    "..",
    "名前",
    "fz-wait-99999",
]
# paths of keys as sent, already encoded (odd escapes, dot segments)
RAW_KEY_PATHS = ["%00", "%FF", "%ED%A0%80", "a%2Fb", "%2E%2E", "%2E", "..", ".", "%", "%zz", "a%0Ab", "%7F", "%2F%2F"]


def _key_path(key: str) -> str:
    return quote(key.encode("utf-8", "surrogatepass"), safe="/")


def _event_key_path(w: World) -> Strategy:
    """{event_key}: the world's keys and those the wait route made, mostly; odd ones too."""
    real = w.event_keys["p1"] + w.event_keys["shared"]
    return weighted(
        (6, st.builds(Cycle(real)).map(_key_path)),
        (6, st.builds(Cycle(SENT_WAIT_KEYS)).map(_key_path)),
        (1, st.sampled_from(w.event_keys["p2"]).map(_key_path)),
        (1, st.sampled_from(real + SENT_WAIT_KEYS[:40]).map(_quoted)),  # a '/' as %2F
        (2, st.sampled_from(ODD_KEYS).map(_key_path)),
        (1, st.sampled_from(RAW_KEY_PATHS)),
        (1, odd_text.map(_quoted).filter(bool)),
    )


def _event_params(w: World) -> dict[str, Strategy]:
    return {"event_key": _event_key_path(w)}


NOTIFY_URLS = [
    "http://127.0.0.1:1/\x00",
    "http://127.0.0.1:1/a\ud800",
    "http://127.0.0.1:1/é",
    "http://127.0.0.1:1/a b",
    "http://127.0.0.1:1/\r\nX-Injected: 1",
    "http://169.254.169.254/latest/meta-data",
    "file:///etc/passwd",
    "http://[::1]:1/",
    "",
    "http://127.0.0.1:1/" + "n" * 2040,
]
WAIT_TIMEOUTS = [0, 1, 2, 60, 3600, 2592000, 2592001, -1, 1.0, 1.5, "60", True, 2**31, 2**63, 10**400]


def _wait_body(w: World) -> Strategy:
    fresh = st.builds(Cycle(WAIT_KEYS))  # fresh keys, in order
    world = w.event_keys["p1"] + w.event_keys["shared"] + w.event_keys["p2"]
    valid = st.fixed_dictionaries(
        {"event_key": fresh},
        optional={
            "timeout_secs": st.sampled_from([60, 3600, 86400, 2592000]),
            "notify_url": st.just(w.endpoints[0]),
        },
    )
    fields = {
        "event_key": weighted(
            (3, fresh),
            (2, st.sampled_from(WAIT_KEYS[:40] + world)),  # used already: 409 (p2's: new in p1)
            (3, st.sampled_from(ODD_KEYS)),
            (1, odd_text),
        ),
        "timeout_secs": weighted((3, st.sampled_from(WAIT_TIMEOUTS)), (1, numbers)),
        "notify_url": weighted((3, st.sampled_from(NOTIFY_URLS)), (2, local_url(w))),
    }
    return sdk_bodies(valid, fields)


# slugs of the world's jobs a run may spawn: mostly worker ones (the child stays queued: no worker
# here) and dead ones (dead-lettered at once, which resumes an awaiting parent); few that reach
# the local endpoint
SPAWN_SLUGS = [*["worker"] * 4, *["dead"] * 3, "sdk", "sdk-schema", "admission", "disabled", "looping", "d0", "d2"]
SPAWN_ODD_SLUGS = ["ok", "slow", "other", "pq-worker", "nope", "WORKER", "worker ", "a" * 255, "a" * 256]


def _spawn_body(w: World) -> Strategy:
    k = w.keys
    same = st.fixed_dictionaries({"job_slug": st.sampled_from(SPAWN_SLUGS), "project_id": st.just("p1")})
    p2 = st.fixed_dictionaries(
        {
            "job_slug": st.just("other"),
            "project_id": st.just("p2"),
            "target_api_key": st.sampled_from([k["other"], k["other"], k["other_read"], k["full"]]),
        }
    )
    pq = st.fixed_dictionaries(
        {
            "job_slug": st.sampled_from(["pq-worker", "pq-worker", "pq-dead"]),
            "project_id": st.just("pq"),
            "target_api_key": st.just(k["pq"]),
        }
    )
    extra = st.fixed_dictionaries(
        {"payload": valid_payload},  # the worker and dead jobs' schema requires `n`
        optional={
            "priority": st.integers(0, 10),
            "await_completion": st.booleans(),
            "await_timeout_secs": st.sampled_from([60, 3600, 86400]),
        },
    )
    valid = st.builds(lambda target, more: {**target, **more}, weighted((8, same), (1, p2), (1, pq)), extra)
    keys = [k[r] for r in ("other", "other_read", "pq", "full", "read", "revoked", "expired")]
    fields = {
        "job_slug": weighted((3, st.sampled_from(SPAWN_SLUGS + SPAWN_ODD_SLUGS)), (1, odd_text)),
        "project_id": weighted((3, st.sampled_from(["p1", "p2", "pq", "nope", "P1", "p" * 256])), (1, odd_text)),
        "payload": weighted((3, valid_payload), (2, json_values), (1, st.just({"n": 10**400}))),
        "priority": weighted((3, st.sampled_from([-1, 0, 10, 11, 2**63, True])), (1, numbers)),
        "await_completion": st.sampled_from([True, False, "true", 1, 0]),
        "await_timeout_secs": weighted((3, st.sampled_from(WAIT_TIMEOUTS)), (1, numbers)),
        "target_api_key": weighted(
            (3, st.sampled_from([*keys, "strait_" + "0" * 64, "strait_", "strait_\x00", "not-a-key", ""])),
            (1, odd_text),
        ),
    }
    # deep JSON under payload, to a job with no payload schema: what canonical_payload judges
    deep = [b'{"job_slug":"sdk","project_id":"p1",' + body[1:] for body in _deep_fields("payload")]
    return weighted((9, sdk_bodies(valid, fields)), (1, st.sampled_from(deep)))


def _continue_body(w: World) -> Strategy:
    valid = st.one_of(st.just({}), st.fixed_dictionaries({"payload": valid_payload}))
    payload = weighted((3, valid_payload), (3, json_values), (1, st.just({"big": "v" * 70000})))
    return sdk_bodies(valid, {"payload": payload}, ("payload",))


# ------------------------------------------------------------------ event triggers (§4.8)


def _send_body(w: World) -> Strategy:
    valid = st.one_of(
        st.just({}),
        st.fixed_dictionaries({"payload": weighted((4, valid_payload), (2, st.just({"n": 1})), (1, st.none()))}),
    )
    return bodies(broken(valid, {"payload": weighted((3, json_values), (1, small_json))}))


def _events_query(w: World) -> Strategy:
    return list_query(
        w,
        status=st.one_of(st.sampled_from(["waiting", "received", "timed_out", "canceled", "WAITING", ""]), odd_text),
        source_type=st.one_of(st.sampled_from(["job_run", "workflow_step", "x"]), odd_text),
        workflow_run_id=st.one_of(st.uuids().map(str), st.sampled_from(w.all_runs()[:2]), odd_text),
    )


# ------------------------------------------------------------------ quotas (engine.md §9.1)
# PUT only on project pq, which holds nothing the other routes need: a daily cap or an active-wait
# cap there answers 429 to pq's waits and spawns, never to p1's or p2's.

QUOTA_INTS = (
    "max_daily_cost_microusd",
    "max_cost_per_run_microusd",
    "max_active_event_triggers",
    "max_queued_runs",
    "max_executing_runs",
)
QUOTA_ZONES = [
    "UTC",
    "Europe/Paris",
    "Etc/GMT+14",
    "Europe/Kyiv",
    "Factory",
    "localtime",
    "posixrules",
    "right/UTC",
    "posix/Europe/Paris",
    "America",
    "Etc",
    "Mars/Olympus",
    "../etc/passwd",
    "/etc/localtime",
    "utc",
    "zone.tab",
    "x" * 300,
]


def _quota_body(w: World) -> Strategy:
    valid = st.fixed_dictionaries(
        {},
        optional={
            **{name: st.sampled_from([0, 1, 3, 1000, 10**9, None]) for name in QUOTA_INTS},
            "timezone": st.sampled_from(["UTC", "Europe/Paris", "Etc/GMT+14"]),
        },
    )
    ints = weighted(
        (3, st.sampled_from([0, 1, 2**31 - 1, 2**31, 2**63 - 1, 2**63, -1, 10**30, 1.0, "5", True])), (1, numbers)
    )
    fields = {
        **{name: ints for name in QUOTA_INTS},
        "timezone": weighted((3, st.sampled_from(QUOTA_ZONES)), (1, odd_text)),
    }
    return bodies(broken(valid, fields))


# ------------------------------------------------------------------ lineage and the run stream (§4.5)

ENDED = ("completed", "dead_letter", "timed_out", "failed", "canceled", "expired", "crashed")
# Last-Event-ID: an event id (a stream of an ended run then replays what followed it, and ends)
LAST_EVENT_IDS = [b"0", b"1", b"-1", b"abc", b"", b" ", b"9" * 30, b"9223372036854775807", b"9223372036854775808"]
LAST_EVENT_IDS += ["٣".encode(), b"1.5", b"0x10", b"+1", b"1_0", b"\xff"]


def _stream_runs(w: World) -> Strategy:
    """Mostly ended runs (410 at once, or a replay that ends), few open ones: an open stream lasts
    SSE_MAX_CONN_DURATION_SECS."""
    ended = [r for status in ENDED for r in w.runs.get(status, [])] + w.chain[:3]
    still = w.runs["queued"][:2] + w.runs["waiting"] + w.run_tokens.run_ids("live")[:2]
    return weighted(
        (12, st.sampled_from(ended)),
        (1, st.sampled_from(still)),
        (1, st.sampled_from(w.other_runs)),
        (2, path_ids([])),
    )


def _stream_headers(w: World) -> Strategy:
    return weighted(
        (4, st.just([])),
        (3, st.sampled_from(LAST_EVENT_IDS).map(lambda v: [(b"Last-Event-ID", v)])),
        (1, st.just([(b"Accept", b"text/event-stream")])),
    )


def _read_runs(w: World) -> list[str]:
    """Runs whose SDK data the management plane reads: the live ones gather the most."""
    t = w.run_tokens
    return t.run_ids("live") * 4 + t.run_ids("complete")[:4] + t.run_ids("fail")[:2] + w.parents + w.all_runs()


def _run_reads(kind: str) -> RouteSpec:
    return RouteSpec(
        params=lambda w: {"run_id": path_ids(_read_runs(w), w.other_runs)},
        query=lambda w: list_query(w, kind),
        weight=0.4,
    )


def _sdk(body: Callable[[World], Strategy] | None, weight: float, pool: str = "live", **extra: Any) -> RouteSpec:
    return RouteSpec(body=body, weight=weight, run_token=pool, **extra)


SPECS: dict[tuple[str, str], RouteSpec] = {
    ("GET", "/health"): RouteSpec(weight=0.3),
    ("GET", "/health/ready"): RouteSpec(weight=0.3),
    ("GET", "/openapi.json"): RouteSpec(weight=0.3),
    ("GET", "/metrics"): RouteSpec(weight=0.3),
    ("POST", "/v1/projects"): RouteSpec(body=_project_body, weight=1.3),
    ("GET", "/v1/projects"): RouteSpec(query=lambda w: query({"org_id": st.one_of(st.just("o1"), odd_text)})),
    ("GET", "/v1/projects/{project_id}"): RouteSpec(
        params=lambda w: {"project_id": path_ids(["p1"], ["p2", "%E5%90%8D%E5%89%8D"])}
    ),
    ("POST", "/v1/api-keys"): RouteSpec(body=_key_body, weight=1.3),
    ("GET", "/v1/api-keys"): RouteSpec(query=list_query, weight=0.6),
    ("DELETE", "/v1/api-keys/{key_id}"): RouteSpec(params=lambda w: {"key_id": path_ids(w.key_ids)}, weight=0.6),
    ("POST", "/v1/jobs"): RouteSpec(
        body=lambda w: bodies(broken(valid_job(w), job_fields(w, patch=False))), weight=2.5
    ),
    ("GET", "/v1/jobs"): RouteSpec(
        query=lambda w: list_query(
            w,
            slug=st.one_of(st.just("main"), odd_text),
            tag_key=st.one_of(st.just("env"), odd_text),
            tag_value=st.one_of(st.just("fuzz"), odd_text),
        )
    ),
    ("GET", "/v1/jobs/{job_id}"): RouteSpec(params=lambda w: {"job_id": path_ids(list(w.jobs.values()))}, weight=0.6),
    ("PATCH", "/v1/jobs/{job_id}"): RouteSpec(
        params=lambda w: {"job_id": path_ids(w.disposable_jobs, _jobs(w, "other"))},
        body=lambda w: bodies(broken(valid_job(w).map(lambda j: {**j, "slug": None}), job_fields(w, patch=True))),
        weight=2.0,
    ),
    ("DELETE", "/v1/jobs/{job_id}"): RouteSpec(
        params=lambda w: {"job_id": path_ids(w.disposable_jobs, _jobs(w, "other", *TRIGGER_TARGETS))}
    ),
    # pause and resume only jobs no other check triggers (a paused job refuses triggers with 409)
    ("POST", "/v1/jobs/{job_id}/pause"): RouteSpec(
        params=lambda w: {"job_id": path_ids(w.disposable_jobs, _jobs(w, "other"))},
        body=lambda w: bodies(broken(st.fixed_dictionaries({"reason": st.just("fuzz")}), {"reason": odd_text})),
        weight=0.6,
    ),
    ("POST", "/v1/jobs/{job_id}/resume"): RouteSpec(
        params=lambda w: {"job_id": path_ids(w.disposable_jobs, _jobs(w, "other"))}, weight=0.4
    ),
    # dependencies (engine.md §2.8) only between disposable jobs: a dependency on a job the checks
    # trigger would make its runs wait
    ("GET", "/v1/jobs/{job_id}/dependencies"): RouteSpec(
        params=lambda w: {"job_id": path_ids(w.disposable_jobs, _jobs(w, "other"))}, weight=0.4
    ),
    ("POST", "/v1/jobs/{job_id}/dependencies"): RouteSpec(
        params=lambda w: {"job_id": path_ids(w.disposable_jobs, _jobs(w, "other"))},
        body=lambda w: bodies(
            broken(
                st.fixed_dictionaries(
                    {"depends_on_job_id": st.sampled_from(w.disposable_jobs)},
                    optional={"condition": st.sampled_from(["completed", "failed", "any"])},
                ),
                {
                    "depends_on_job_id": weighted(
                        (3, st.sampled_from(w.disposable_jobs + _jobs(w, "other"))), (1, odd_text)
                    ),
                    "condition": weighted((3, st.sampled_from(["completed", "failed", "any", "x"])), (1, odd_text)),
                },
            )
        ),
        weight=0.6,
    ),
    ("DELETE", "/v1/jobs/{job_id}/dependencies/{dep_id}"): RouteSpec(
        params=lambda w: {
            "job_id": path_ids([w.dependent_job], w.disposable_jobs + _jobs(w, "other")),
            "dep_id": path_ids(w.dependencies, [str(uuid.UUID(int=7))]),
        },
        weight=0.3,
    ),
    ("GET", "/v1/jobs/{job_id}/versions"): RouteSpec(
        params=lambda w: {"job_id": path_ids([j for j, _ in w.versions], list(w.jobs.values()))},
        query=lambda w: list_query(w, "str"),
    ),
    ("GET", "/v1/jobs/{job_id}/versions/{version_id}"): RouteSpec(
        params=lambda w: {
            "job_id": path_ids([j for j, _ in w.versions], list(w.jobs.values())),
            "version_id": weighted((4, st.sampled_from([v for _, v in w.versions])), (1, path_ids([]))),
        }
    ),
    ("POST", "/v1/jobs/{job_id}/trigger"): RouteSpec(
        params=lambda w: {"job_id": path_ids(_jobs(w, *TRIGGER_TARGETS), _jobs(w, "other"))},
        body=lambda w: bodies(broken(valid_trigger, trigger_fields())),
        weight=3.0,
    ),
    ("POST", "/v1/jobs/{job_id}/trigger/bulk"): RouteSpec(
        params=lambda w: {"job_id": path_ids(_jobs(w, *TRIGGER_TARGETS), _jobs(w, "other"))},
        body=_bulk_body,
        weight=2.0,
    ),
    ("GET", "/v1/runs"): RouteSpec(query=lambda w: list_query(w, **run_filters(w))),
    ("GET", "/v1/runs/dlq"): RouteSpec(query=list_query, weight=0.6),
    ("POST", "/v1/runs/bulk-dlq-replay"): RouteSpec(body=_dlq_body, weight=0.8),
    ("GET", "/v1/runs/{run_id}"): RouteSpec(
        params=lambda w: {"run_id": path_ids(w.all_runs(), w.other_runs)}, weight=0.6
    ),
    ("DELETE", "/v1/runs/{run_id}"): RouteSpec(
        params=lambda w: {"run_id": path_ids(w.all_runs(), w.other_runs)}, weight=0.6
    ),
    ("POST", "/v1/runs/{run_id}/replay"): RouteSpec(
        params=lambda w: {"run_id": path_ids(_weighted_runs(w), w.other_runs)},
        query=lambda w: query({"from_checkpoint": st.one_of(st.just("1"), odd_text)}),
    ),
    ("POST", "/v1/runs/{run_id}/dlq-replay"): RouteSpec(
        params=lambda w: {"run_id": path_ids(_weighted_runs(w), w.other_runs)}
    ),
    ("GET", "/v1/runs/{run_id}/events"): RouteSpec(
        params=lambda w: {"run_id": path_ids(w.all_runs(), w.other_runs)},
        query=lambda w: list_query(
            w, "int", level=st.one_of(st.just("info"), odd_text), type=st.one_of(st.just("state_change"), odd_text)
        ),
    ),
    ("GET", "/v1/runs/{run_id}/checkpoints"): _run_reads("seq"),
    ("GET", "/v1/runs/{run_id}/outputs"): _run_reads("key"),
    ("GET", "/v1/runs/{run_id}/usage"): _run_reads("int"),
    ("GET", "/v1/runs/{run_id}/tool-calls"): _run_reads("int"),
    ("GET", "/v1/runs/{run_id}/children"): _run_reads("uuid"),
    ("GET", "/v1/runs/{run_id}/dependency-status"): RouteSpec(
        params=lambda w: {"run_id": path_ids(w.all_runs(), w.other_runs)}, weight=0.3
    ),
    ("GET", "/v1/runs/{run_id}/dependencies"): RouteSpec(
        params=lambda w: {"run_id": path_ids(w.all_runs(), w.other_runs)}, weight=0.3
    ),
    ("POST", "/sdk/v1/runs/{run_id}/heartbeat"): _sdk(None, 0.3),
    ("POST", "/sdk/v1/runs/{run_id}/log"): _sdk(_log_body, 0.6),
    ("POST", "/sdk/v1/runs/{run_id}/progress"): _sdk(_progress_body, 0.5),
    ("POST", "/sdk/v1/runs/{run_id}/complete"): _sdk(_complete_body, 0.6, "complete"),
    ("POST", "/sdk/v1/runs/{run_id}/fail"): _sdk(_fail_body, 0.4, "fail"),
    ("POST", "/sdk/v1/runs/{run_id}/checkpoint"): _sdk(_checkpoint_body, 0.5),
    ("POST", "/sdk/v1/runs/{run_id}/output"): _sdk(_output_body, 0.6),
    ("POST", "/sdk/v1/runs/{run_id}/state"): _sdk(_state_body, 0.5),
    ("GET", "/sdk/v1/runs/{run_id}/state"): _sdk(None, 0.25),
    ("GET", "/sdk/v1/runs/{run_id}/state/{key}"): _sdk(None, 0.3, params=lambda w: {"key": _state_key(w)}),
    ("DELETE", "/sdk/v1/runs/{run_id}/state/{key}"): _sdk(None, 0.3, params=lambda w: {"key": _state_key(w)}),
    ("GET", "/sdk/v1/runs/{run_id}/payload"): _sdk(None, 0.25),
    ("POST", "/sdk/v1/runs/{run_id}/annotate"): _sdk(_annotate_body, 0.4),
    ("POST", "/sdk/v1/runs/{run_id}/usage"): _sdk(_usage_body, 0.5),
    ("POST", "/sdk/v1/runs/{run_id}/tool-call"): _sdk(_tool_call_body, 0.4),
    ("POST", "/sdk/v1/runs/{run_id}/wait-for-event"): _sdk(_wait_body, 0.7, "wait"),
    ("POST", "/sdk/v1/runs/{run_id}/spawn"): _sdk(_spawn_body, 0.8, "spawn"),
    ("POST", "/sdk/v1/runs/{run_id}/continue"): _sdk(_continue_body, 0.5, "chain"),
    ("POST", "/v1/events/{event_key}/send"): RouteSpec(params=_event_params, body=_send_body, weight=1.0),
    ("GET", "/v1/events"): RouteSpec(query=_events_query, weight=0.4),
    ("GET", "/v1/events/{event_key}"): RouteSpec(params=_event_params, weight=0.5),
    ("DELETE", "/v1/events/{event_key}"): RouteSpec(params=_event_params, weight=0.5),
    ("GET", "/v1/projects/{project_id}/quotas"): RouteSpec(
        params=lambda w: {"project_id": path_ids(["pq", "p1", "p2"], ["nope", "%E5%90%8D%E5%89%8D"])}, weight=0.3
    ),
    ("PUT", "/v1/projects/{project_id}/quotas"): RouteSpec(
        params=lambda w: {"project_id": path_ids(["pq"], ["nope"])}, body=_quota_body, weight=0.7
    ),
    ("GET", "/v1/runs/{run_id}/debug-bundle"): RouteSpec(
        params=lambda w: {"run_id": path_ids(w.chain + w.all_runs(), w.other_runs)}, weight=0.4
    ),
    ("GET", "/v1/runs/{run_id}/lineage"): RouteSpec(
        params=lambda w: {"run_id": path_ids(w.chain * 3 + w.all_runs(), w.other_runs)}, weight=0.4
    ),
    ("GET", "/v1/runs/{run_id}/stream"): RouteSpec(
        params=lambda w: {"run_id": _stream_runs(w)}, headers=_stream_headers, weight=0.3
    ),
    # environments, job groups, project pause (migration 0007)
    ("POST", "/v1/environments"): RouteSpec(body=lambda w: _named_body(w, environment=True, patch=False), weight=1.2),
    ("GET", "/v1/environments"): RouteSpec(query=list_query, weight=0.4),
    ("GET", "/v1/environments/{env_id}"): RouteSpec(params=lambda w: {"env_id": _env_ids(w)}, weight=0.4),
    ("PATCH", "/v1/environments/{env_id}"): RouteSpec(
        params=lambda w: {"env_id": _env_ids(w)},
        body=lambda w: _named_body(w, environment=True, patch=True),
        weight=1.2,
    ),
    ("DELETE", "/v1/environments/{env_id}"): RouteSpec(
        params=lambda w: {"env_id": _env_ids(w, w.disposable_environments * 3)}, weight=0.4
    ),
    ("GET", "/v1/environments/{env_id}/variables"): RouteSpec(params=lambda w: {"env_id": _env_ids(w)}, weight=0.3),
    ("POST", "/v1/job-groups"): RouteSpec(body=lambda w: _named_body(w, environment=False, patch=False), weight=0.8),
    ("GET", "/v1/job-groups"): RouteSpec(query=list_query, weight=0.4),
    ("GET", "/v1/job-groups/{group_id}"): RouteSpec(params=lambda w: {"group_id": _group_ids(w)}, weight=0.4),
    ("PATCH", "/v1/job-groups/{group_id}"): RouteSpec(
        params=lambda w: {"group_id": _group_ids(w)},
        body=lambda w: _named_body(w, environment=False, patch=True),
        weight=0.8,
    ),
    ("DELETE", "/v1/job-groups/{group_id}"): RouteSpec(
        params=lambda w: {"group_id": _group_ids(w, w.disposable_groups * 3)}, weight=0.4
    ),
    ("GET", "/v1/job-groups/{group_id}/jobs"): RouteSpec(
        params=lambda w: {"group_id": _group_ids(w)}, query=list_query, weight=0.4
    ),
    ("GET", "/v1/job-groups/{group_id}/stats"): RouteSpec(params=lambda w: {"group_id": _group_ids(w)}, weight=0.3),
    ("POST", "/v1/job-groups/{group_id}/pause-all"): RouteSpec(
        params=lambda w: {"group_id": _group_ids(w)}, body=_pause_body, weight=0.5
    ),
    ("POST", "/v1/job-groups/{group_id}/resume-all"): RouteSpec(
        params=lambda w: {"group_id": _group_ids(w)}, weight=0.4
    ),
    ("POST", "/v1/projects/{project_id}/pause"): RouteSpec(params=_paused_projects, body=_pause_body, weight=0.5),
    ("POST", "/v1/projects/{project_id}/resume"): RouteSpec(params=_paused_projects, weight=0.4),
}
