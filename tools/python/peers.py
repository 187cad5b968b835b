#!/usr/bin/env python3
"""Run the workloads W1-W6 of loky-bench (see its --help) on the Python peers.

Peers: concurrent.futures.ProcessPoolExecutor, Python loky
(get_reusable_executor), multiprocessing.Pool and joblib (Parallel, loky
backend, auto-memmapping).  A numpy in-process sum is added to W3 as the
ceiling.

    python3 tools/python/peers.py              # markdown table
    python3 tools/python/peers.py --json       # one JSON document on stdout
    python3 tools/python/peers.py --quick      # ~10x smaller counts (CI smoke)
    python3 tools/python/peers.py --only W1,W3 # subset of workloads

Every (peer, workload) pair runs in its own child interpreter with a wall
clock limit, so a crash, a hang or a leaked pool in one pair cannot take the
others down: a failure becomes a record with an "error" string.

JSON document:
    {"python": "3.11.7", "cores": 2, "date": "2025-01-01T00:00:00+00:00",
     "platform": ..., "quick": false, "versions": {...},
     "results": [{"peer", "workload", "metric", "value", "unit", "note"}, ...]}
A record may also carry "skipped" (the peer or workload was not run: value is
null) or "error" (the run failed: value is null).  A measured value can also be
null when there was nothing to measure (see the note, e.g. a task that never
fails).
"""

import argparse
import datetime
import importlib.util
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import traceback

PEERS = ["concurrent.futures", "loky", "multiprocessing.Pool", "joblib"]
INPROCESS = "numpy (in-process)"
WORKLOADS = ["W1", "W2", "W3", "W4", "W5", "W6"]
MARKER = "@@PEERS-RESULTS@@"
MiB = 1024 * 1024

# ---------------------------------------------------------------------------
# Tasks: module-level so that every start method (fork, spawn, loky) can
# find them by name.
# ---------------------------------------------------------------------------


def inc(x):
    return x + 1


def double(x):
    return x * 2


def double_chunk(xs):
    return [x * 2 for x in xs]


def array_sum(a):
    return float(a.sum())


def suicide():
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)  # not reached


# ---------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------


def params(quick):
    if quick:
        return dict(
            w1_warmup=20, w1_n=1000, w1_joblib_warmup=5, w1_joblib_n=50,
            w2_sizes=[100_000, 1_000_000],
            w2_chunks=[1_000, 10_000, 100_000],
            w2_slow_s=6.0, w2_budget_s=40.0,
            w3_bytes=32 * MiB, w3_reps=2,
            w4_reps=2, w5_n=100, w6_reps=1, w6_hang_s=2.0,
        )
    return dict(
        w1_warmup=200, w1_n=10_000, w1_joblib_warmup=20, w1_joblib_n=500,
        w2_sizes=[1_000_000, 10_000_000],
        w2_chunks=[10_000, 100_000, 1_000_000],
        w2_slow_s=60.0, w2_budget_s=150.0,
        w3_bytes=256 * MiB, w3_reps=5,
        w4_reps=5, w5_n=1000, w6_reps=3, w6_hang_s=5.0,
    )


# per-child wall clock limit (s); generous, a hang costs at most this
CHILD_LIMIT = {"W1": 180, "W2": 300, "W3": 240, "W4": 120, "W5": 60, "W6": 120}
CHILD_LIMIT_QUICK = {"W1": 60, "W2": 90, "W3": 60, "W4": 60, "W5": 30, "W6": 60}


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def rec(peer, wl, metric, value, unit, note=""):
    if isinstance(value, float):
        value = float(f"{value:.4g}") if abs(value) < 1e6 else round(value)
    return {"peer": peer, "workload": wl, "metric": metric, "value": value,
            "unit": unit, "note": note}


def err_rec(peer, wl, msg):
    return {"peer": peer, "workload": wl, "metric": None, "value": None,
            "unit": None, "note": msg, "error": msg}


def skip_rec(peer, wl, reason):
    return {"peer": peer, "workload": wl, "metric": None, "value": None,
            "unit": None, "note": reason, "skipped": reason}


def exc_str(e):
    return f"{type(e).__name__}: {e}".strip()


def percentile(xs, q):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def now():
    return time.perf_counter()


def mp_ctx(args):
    import multiprocessing as mp
    return mp.get_context(args.start_method) if args.start_method else mp.get_context()


def start_note(args):
    import multiprocessing as mp
    return f"start method {args.start_method or mp.get_start_method()}"


# ---------------------------------------------------------------------------
# Peer adapters: a uniform "pool" with submit(fn, *a) -> result getter,
# map, shutdown.  Each returns records for one workload.
# ---------------------------------------------------------------------------


class CF:
    name = "concurrent.futures"

    def __init__(self, args):
        from concurrent.futures import ProcessPoolExecutor
        self.ex = ProcessPoolExecutor(max_workers=2, mp_context=mp_ctx(args))

    def call(self, fn, *a, timeout=None):
        return self.ex.submit(fn, *a).result(timeout=timeout)

    def map(self, fn, it, chunksize):
        n = 0
        for _ in self.ex.map(fn, it, chunksize=chunksize):
            n += 1
        return n

    def shutdown(self):
        self.ex.shutdown(wait=True)


class Loky:
    name = "loky"

    def __init__(self, args):
        from loky import get_reusable_executor
        self.ex = get_reusable_executor(max_workers=2)

    def call(self, fn, *a, timeout=None):
        return self.ex.submit(fn, *a).result(timeout=timeout)

    def map(self, fn, it, chunksize):
        n = 0
        for _ in self.ex.map(fn, it, chunksize=chunksize):
            n += 1
        return n

    def shutdown(self):
        self.ex.shutdown(wait=True)


class MPPool:
    name = "multiprocessing.Pool"

    def __init__(self, args):
        self.pool = mp_ctx(args).Pool(2)

    def call(self, fn, *a, timeout=None):
        return self.pool.apply_async(fn, a).get(timeout=timeout)

    def map(self, fn, it, chunksize):
        return len(self.pool.map(fn, it, chunksize=chunksize))

    def shutdown(self):
        self.pool.close()
        self.pool.join()


class Joblib:
    name = "joblib"

    def __init__(self, args):
        pass

    def call(self, fn, *a, timeout=None):
        from joblib import Parallel, delayed
        return Parallel(n_jobs=2)([delayed(fn)(*a)])[0]

    def map(self, fn, it, chunksize):
        # per-item delayed() costs several µs in the parent, so joblib gets
        # explicit chunks: one delayed(double_chunk) per list of chunksize ints
        from joblib import Parallel, delayed
        r = range(it) if isinstance(it, int) else it
        n = len(r)

        def chunks():
            for a in range(0, n, chunksize):
                yield delayed(double_chunk)(list(r[a:a + chunksize]))

        out = Parallel(n_jobs=2)(chunks())
        return sum(len(c) for c in out)

    def shutdown(self):
        joblib_shutdown()


def joblib_shutdown():
    try:
        import joblib.externals.loky.reusable_executor as ru
        ex = ru._executor
        if ex is not None:
            ex.shutdown(wait=True)
    except Exception:
        pass


ADAPTERS = {"concurrent.futures": CF, "loky": Loky,
            "multiprocessing.Pool": MPPool, "joblib": Joblib}


# ---------------------------------------------------------------------------
# Workloads
# ---------------------------------------------------------------------------


def w1(peer, args, p):
    pool = ADAPTERS[peer](args)
    try:
        if peer == "joblib":
            warm, n = p["w1_joblib_warmup"], p["w1_joblib_n"]
            note = (f"capped at {n} round trips (one Parallel(n_jobs=2) call "
                    f"with a single delayed(inc) each)")
        else:
            warm, n = p["w1_warmup"], p["w1_n"]
            note = f"{n} round trips after {warm} warm-up"
            if peer == "multiprocessing.Pool":
                note += ", apply_async().get()"
        if peer in ("concurrent.futures", "multiprocessing.Pool"):
            note += f", {start_note(args)}"
        for i in range(warm):
            assert pool.call(inc, i) == i + 1
        lat = []
        for i in range(n):
            t0 = time.perf_counter_ns()
            r = pool.call(inc, i)
            lat.append((time.perf_counter_ns() - t0) / 1e3)
            assert r == i + 1
        return [rec(peer, "W1", "p50", percentile(lat, 0.5), "us", note),
                rec(peer, "W1", "p99", percentile(lat, 0.99), "us", note)]
    finally:
        pool.shutdown()


def w2(peer, args, p):
    out = []
    pool = ADAPTERS[peer](args)
    try:
        pool.map(double, range(1000), 100)  # warm
        t_start = now()
        too_slow = None
        for size in p["w2_sizes"]:
            label = f"{size // 1_000_000}M" if size >= 1_000_000 else f"{size // 1000}k"
            if too_slow:
                out.append(skip_rec(peer, "W2", f"items_per_s_{label}: skipped, {too_slow}"))
                continue
            tried = []
            for cs in p["w2_chunks"]:
                if now() - t_start > p["w2_budget_s"]:
                    too_slow = f"W2 time budget of {p['w2_budget_s']:.0f} s spent"
                    break
                t0 = now()
                n = pool.map(double, range(size), cs)
                dt = now() - t0
                if n != size:
                    raise RuntimeError(f"map returned {n} items, expected {size}")
                tried.append((size / dt, cs, dt))
                if dt > p["w2_slow_s"]:
                    too_slow = f"a {label} run took {dt:.0f} s (> {p['w2_slow_s']:.0f} s)"
                    break
            if not tried:
                out.append(skip_rec(peer, "W2", f"items_per_s_{label}: skipped, {too_slow}"))
                continue
            best = max(tried)
            detail = ", ".join(f"{cs}: {ips:.3g}/s" for ips, cs, _ in sorted(tried, key=lambda t: t[1]))
            note = f"chunksize={best[1]} (best of {detail})"
            if peer == "joblib":
                note += "; explicit chunks: one delayed(double_chunk) per list of chunksize ints"
            elif peer == "multiprocessing.Pool":
                note += "; Pool.map"
            if too_slow:
                note += f"; stopped early: {too_slow}"
            out.append(rec(peer, "W2", f"items_per_s_{label}", best[0], "items/s", note))
        return out
    finally:
        pool.shutdown()


def w3(peer, args, p):
    import numpy as np
    nbytes = p["w3_bytes"]
    arr = np.arange(nbytes // 8, dtype=np.float64)
    expect = float(arr.sum())
    size_note = f"{nbytes // MiB} MiB float64, median of {p['w3_reps']}"
    out = []

    def report(times, how, extra=None):
        med = statistics.median(times)
        r = [rec(peer, "W3", "s_per_call", med, "s", f"{how}; {size_note}"),
             rec(peer, "W3", "GB_per_s", nbytes / med / 1e9, "GB/s", f"{how}; {size_note}")]
        if extra:
            r.append(extra)
        return r

    if peer == INPROCESS:
        times = []
        for _ in range(p["w3_reps"] + 1):
            t0 = now()
            s = float(arr.sum())
            times.append(now() - t0)
        assert s == expect
        return report(times[1:], "arr.sum() in the calling process")

    if peer == "joblib":
        from joblib import Parallel, delayed
        with Parallel(n_jobs=2) as par:  # keeps its temp folder: memmap reused
            t0 = now()
            s = par([delayed(array_sum)(arr)])[0]
            first = now() - t0
            assert s == expect
            times = []
            for _ in range(p["w3_reps"]):
                t0 = now()
                s = par([delayed(array_sum)(arr)])[0]
                times.append(now() - t0)
                assert s == expect
        joblib_shutdown()
        how = ("auto-memmapping (max_nbytes default), memmap reused: calls after the "
               "first; each call still hashes the array in the parent")
        out = report(times, how, rec(peer, "W3", "s_first_call", first, "s",
                                     f"first call, dumps the memmap; {size_note.split(',')[0]}"))
        # the same call with memmapping off: the array is pickled to the
        # worker, as with the other pools (metrics *_by_value)
        with Parallel(n_jobs=2, max_nbytes=None) as par:
            assert par([delayed(inc)(1)])[0] == 2  # workers up
            times = []
            for i in range(p["w3_reps"] + 1):
                t0 = now()
                s = par([delayed(array_sum)(arr)])[0]
                dt = now() - t0
                assert s == expect
                if i:  # first is warm-up
                    times.append(dt)
        joblib_shutdown()
        how = "max_nbytes=None: by value (pickled through the pool)"
        for r in report(times, how):
            r["metric"] += "_by_value"
            out.append(r)
        return out

    pool = ADAPTERS[peer](args)
    try:
        pool.call(inc, 1)  # workers up
        times = []
        for i in range(p["w3_reps"] + 1):
            t0 = now()
            s = pool.call(array_sum, arr)
            dt = now() - t0
            assert s == expect
            if i:  # first is warm-up
                times.append(dt)
        return report(times, "by value (pickled through the pool)")
    finally:
        pool.shutdown()


def w4(peer, args, p):
    totals, firsts = [], []
    for _ in range(p["w4_reps"]):
        if peer == "joblib":
            joblib_shutdown()
            from joblib import Parallel, delayed
            t0 = now()
            r = Parallel(n_jobs=2)([delayed(inc)(1)])[0]
            t1 = now()
            joblib_shutdown()
            t2 = now()
        else:
            t0 = now()
            pool = ADAPTERS[peer](args)
            r = pool.call(inc, 1)
            t1 = now()
            pool.shutdown()
            t2 = now()
        assert r == 2
        firsts.append((t1 - t0) * 1e3)
        totals.append((t2 - t0) * 1e3)
    note = f"median of {p['w4_reps']}"
    if peer in ("concurrent.futures", "multiprocessing.Pool"):
        note += f", {start_note(args)}"
    if peer == "loky":
        note += ", get_reusable_executor(max_workers=2) then shutdown(wait=True)"
    if peer == "joblib":
        note += ", Parallel(n_jobs=2) then shutting down joblib's reusable loky executor"
    return [rec(peer, "W4", "ms_create_first_result_shutdown", statistics.median(totals), "ms", note),
            rec(peer, "W4", "ms_to_first_result", statistics.median(firsts), "ms", note)]


def w5(peer, args, p):
    from loky import get_reusable_executor
    ex = get_reusable_executor(max_workers=2)
    ex.submit(inc, 1).result()
    both, get_only = [], []
    for i in range(p["w5_n"]):
        t0 = time.perf_counter_ns()
        ex2 = get_reusable_executor(max_workers=2)
        t1 = time.perf_counter_ns()
        r = ex2.submit(inc, i).result()
        t2 = time.perf_counter_ns()
        assert r == i + 1
        get_only.append((t1 - t0) / 1e3)
        both.append((t2 - t0) / 1e3)
    reused = ex2 is ex
    note = f"median of {p['w5_n']}; same executor object returned: {reused}"
    ex.shutdown(wait=True)
    return [rec(peer, "W5", "us_get_and_one_task", statistics.median(both), "us", note),
            rec(peer, "W5", "us_get_only", statistics.median(get_only), "us", note)]


def w6(peer, args, p):
    fail_ms, next_ms, names, next_notes = [], [], set(), set()
    reps = 1 if peer == "multiprocessing.Pool" else p["w6_reps"]
    hang = p["w6_hang_s"]
    for _ in range(reps):
        if peer == "joblib":
            from joblib import Parallel, delayed
            assert Parallel(n_jobs=2)([delayed(inc)(1)])[0] == 2
            t0 = now()
            try:
                Parallel(n_jobs=2)([delayed(suicide)()])
                raise RuntimeError("suicide task returned normally")
            except Exception as e:
                names.add(type(e).__name__)
            t1 = now()
            assert Parallel(n_jobs=2)([delayed(inc)(1)])[0] == 2
            t2 = now()
            fail_ms.append((t1 - t0) * 1e3)
            next_ms.append((t2 - t1) * 1e3)
            next_notes.add("next Parallel(n_jobs=2) call succeeds (loky executor replaced)")
            joblib_shutdown()
            continue

        pool = ADAPTERS[peer](args)
        try:
            assert pool.call(inc, 1) == 2
            t0 = now()
            failed = True
            try:
                pool.call(suicide, timeout=30 if peer != "multiprocessing.Pool" else hang)
                raise RuntimeError("suicide task returned normally")
            except Exception as e:
                import multiprocessing
                if isinstance(e, multiprocessing.TimeoutError):
                    failed = False
                    names.add(f"none, get() still pending after {hang:.0f} s (task lost)")
                else:
                    names.add(type(e).__name__)
            t1 = now()
            if failed:
                fail_ms.append((t1 - t0) * 1e3)
            # next task, on the same pool if it still takes work
            try:
                r = pool.call(inc, 1, timeout=30)
                assert r == 2
                next_notes.add("same pool: next task succeeds" + (
                    "" if failed else f" (timed after the {hang:.0f} s wait: the worker was already replaced)"))
            except Exception as e:
                if peer == "concurrent.futures":
                    next_notes.add(f"broken ({type(e).__name__}); time to a new pool's first result")
                    pool2 = CF(args)
                    assert pool2.call(inc, 1) == 2
                    pool2.shutdown()
                elif peer == "loky":
                    from loky import get_reusable_executor
                    next_notes.add(f"submit on the same executor object raises {type(e).__name__}; "
                                   "get_reusable_executor() returns a new one: time to its result")
                    assert get_reusable_executor(max_workers=2).submit(inc, 1).result(timeout=30) == 2
                else:
                    raise
            t2 = now()
            next_ms.append((t2 - t1) * 1e3)
        finally:
            try:
                if peer == "loky":
                    from loky import get_reusable_executor
                    get_reusable_executor(max_workers=2).shutdown(wait=True)
                elif peer == "multiprocessing.Pool":
                    pool.pool.terminate()
                    pool.pool.join()
                else:
                    pool.shutdown()
            except Exception:
                pass
    exc_note = "exception: " + ", ".join(sorted(names))
    runs = f"median of {len(next_ms)}"
    out = []
    if fail_ms:
        out.append(rec(peer, "W6", "ms_to_failure", statistics.median(fail_ms), "ms", f"{exc_note}; {runs}"))
    else:
        out.append(rec(peer, "W6", "ms_to_failure", None, "ms",
                       f"the future never fails: {exc_note}"))
    out.append(rec(peer, "W6", "ms_to_next_success", statistics.median(next_ms), "ms",
                   "; ".join(sorted(next_notes)) + f"; {runs}"))
    return out


RUNNERS = {"W1": w1, "W2": w2, "W3": w3, "W4": w4, "W5": w5, "W6": w6}


def applicable(peer, wl):
    if wl == "W5":
        return peer == "loky"
    if peer == INPROCESS:
        return wl == "W3"
    return True


# ---------------------------------------------------------------------------
# Child: one (peer, workload)
# ---------------------------------------------------------------------------


def child_main(args):
    peer, wl = args.child
    p = params(args.quick)
    try:
        out = RUNNERS[wl](peer, args, p)
    except Exception as e:
        traceback.print_exc()
        out = [err_rec(peer, wl, exc_str(e))]
    sys.stdout.write("\n" + MARKER + json.dumps(out) + "\n")
    sys.stdout.flush()


def run_child(peer, wl, args):
    limit = (CHILD_LIMIT_QUICK if args.quick else CHILD_LIMIT)[wl]
    cmd = [sys.executable, os.path.abspath(__file__), "--_child", peer, wl]
    if args.quick:
        cmd.append("--quick")
    if args.start_method:
        cmd += ["--start-method", args.start_method]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, errtxt = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.communicate()
        return [err_rec(peer, wl, f"timed out after {limit} s (killed)")]
    finally:
        # a child's pool workers may outlive it: end the whole session group
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    for line in reversed(out.splitlines()):
        if line.startswith(MARKER):
            try:
                return json.loads(line[len(MARKER):])
            except ValueError as e:
                return [err_rec(peer, wl, f"unreadable child output: {e}")]
    tail = " | ".join(errtxt.strip().splitlines()[-3:])
    return [err_rec(peer, wl, f"child exited with status {proc.returncode}: {tail}")]


# ---------------------------------------------------------------------------
# Parent
# ---------------------------------------------------------------------------


def have(mod):
    try:
        return importlib.util.find_spec(mod) is not None
    except (ImportError, ValueError):
        return False


def versions():
    v = {}
    for m in ("loky", "joblib", "numpy", "cloudpickle"):
        if have(m):
            try:
                from importlib.metadata import version
                v[m] = version(m)
            except Exception:
                v[m] = "unknown"
    return v


def fmt_value(v):
    if v is None:
        return "—"
    if isinstance(v, float):
        if v >= 1e6:
            return f"{v:.3e}"
        return f"{v:.4g}"
    return str(v)


def markdown(doc):
    lines = [f"Python {doc['python']}, {doc['cores']} cores, {doc['date']}"
             + (" (--quick)" if doc["quick"] else ""), "",
             "| peer | workload | metric | value | unit | note |",
             "|---|---|---|---|---|---|"]
    for r in doc["results"]:
        val = fmt_value(r.get("value"))
        if "skipped" in r:
            val = "skipped"
        elif "error" in r:
            val = "error"
        note = (r.get("note") or "").replace("|", "\\|")
        lines.append(f"| {r['peer']} | {r.get('workload') or ''} | {r.get('metric') or ''} "
                     f"| {val} | {r.get('unit') or ''} | {note} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON document")
    ap.add_argument("--quick", action="store_true", help="~10x smaller counts (CI smoke run)")
    ap.add_argument("--only", default="", help="comma-separated workloads, e.g. W1,W3")
    ap.add_argument("--peers", default="", help="comma-separated peers (default: all)")
    ap.add_argument("--start-method", default=None, choices=["fork", "spawn", "forkserver"],
                    help="start method for concurrent.futures and multiprocessing.Pool "
                         "(default: the platform's)")
    ap.add_argument("--_child", nargs=2, metavar=("PEER", "WORKLOAD"), dest="child",
                    help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        child_main(args)
        return

    wls = WORKLOADS
    if args.only:
        wls = [w.strip().upper() for w in args.only.split(",") if w.strip()]
        bad = [w for w in wls if w not in WORKLOADS]
        if bad:
            ap.error(f"unknown workload(s) {bad}; choose from {WORKLOADS}")
    peers = PEERS + [INPROCESS]
    if args.peers:
        want = [x.strip() for x in args.peers.split(",") if x.strip()]
        peers = [x for x in peers if x in want]

    results = []
    installed = {"concurrent.futures": True, "multiprocessing.Pool": True,
                 "loky": have("loky"), "joblib": have("joblib"), INPROCESS: have("numpy")}
    for peer in peers:
        if not installed[peer] and peer != INPROCESS:
            results.append(skip_rec(peer, None, "not installed"))
    numpy_ok = have("numpy")
    for wl in wls:
        for peer in peers:
            if not applicable(peer, wl) or not installed[peer] and peer != INPROCESS:
                continue
            if wl == "W3" and not numpy_ok:
                results.append(skip_rec(peer, "W3", "numpy not installed"))
                continue
            t0 = now()
            got = run_child(peer, wl, args)
            print(f"# {peer} {wl}: {now() - t0:.1f} s", file=sys.stderr, flush=True)
            results.extend(got)

    doc = {
        "python": platform.python_version(),
        "cores": os.cpu_count(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "quick": args.quick,
        "start_method": args.start_method or __import__("multiprocessing").get_start_method(),
        "versions": versions(),
        "results": results,
    }
    if args.json:
        print(json.dumps(doc, indent=None))
    else:
        print(markdown(doc))


if __name__ == "__main__":
    main()
