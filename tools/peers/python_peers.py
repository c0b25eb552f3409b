#!/usr/bin/env python3
"""Python's multiprocessing, measured as the peer of `multiproc bench`.

Embedded into the multiproc tool at build time (tools/CMakeLists.txt), written
to a temporary file and run with python3 when python3 is on PATH. The metric
names and methods are those of ../shared/peers/py_mp_bench.py for the figures
multiproc's targets compare with (stdlib only). One line per metric:
    <metric> <median> <unit> min=<min> max=<max> n=<repetitions>
Usage: python3 python_peers.py [section ...]
Sections: start pool executor queue value manager  (default: all)
Env: BENCH_REPS (default 5). Payloads are 64-byte bytes objects.
"""
import os
import statistics
import sys
import time
import multiprocessing as mp

PAYLOAD = b"x" * 64
REPS = max(1, int(os.environ.get("BENCH_REPS", "5")))


def fmt(v):
    if v < 100:
        return "%.3f" % v
    if v < 10000:
        return "%.1f" % v
    return "%.0f" % v


def report(name, vals, unit):
    vals = sorted(vals)
    print("%s %s %s min=%s max=%s n=%d" % (name, fmt(statistics.median(vals)), unit,
                                          fmt(vals[0]), fmt(vals[-1]), len(vals)), flush=True)


def _noop():
    pass


def _sq(x):
    return x * x


# py_process_start_join_fork  ms  Process(target=noop).start() + join(), fork
def bench_start(k=30):
    ctx = mp.get_context("fork")
    p = ctx.Process(target=_noop)
    p.start()
    p.join()
    vals = []
    for _ in range(REPS):
        t0 = time.perf_counter()
        for _ in range(k):
            p = ctx.Process(target=_noop)
            p.start()
            p.join()
        vals.append((time.perf_counter() - t0) / k * 1e3)
    report("py_process_start_join_fork", vals, "ms")


# py_pool_map_default_chunksize_n200000, py_pool_map_chunksize1_n20000  tasks/s
# Pool() of os.cpu_count() processes, map(x*x) over range(n).
def bench_pool(n_default=200000, n_chunk1=20000):
    with mp.Pool() as pool:
        pool.map(_sq, range(2000))
        for label, n, cs in (("default_chunksize", n_default, None), ("chunksize1", n_chunk1, 1)):
            vals = []
            for _ in range(REPS):
                t0 = time.perf_counter()
                r = pool.map(_sq, range(n), chunksize=cs)
                t1 = time.perf_counter()
                assert len(r) == n
                vals.append(n / (t1 - t0))
            report("py_pool_map_%s_n%d" % (label, n), vals, "tasks/s")


# py_executor_submit_result_sequential_latency  us  submit(x*x).result(), one at a time
def bench_executor(n_seq=1000):
    import concurrent.futures as cf
    with cf.ProcessPoolExecutor() as ex:
        [f.result() for f in [ex.submit(_sq, i) for i in range(500)]]
        vals = []
        for _ in range(REPS):
            t0 = time.perf_counter()
            for i in range(n_seq):
                ex.submit(_sq, i).result()
            t1 = time.perf_counter()
            vals.append((t1 - t0) / n_seq * 1e6)
        report("py_executor_submit_result_sequential_latency", vals, "us")


def _q_producer(q, n, barrier, res):
    barrier.wait()
    t = time.perf_counter()
    put = q.put
    for _ in range(n):
        put(PAYLOAD)
    res.put(("p", t, n))
    q.close()
    q.join_thread()


def _q_consumer(q, barrier, res):
    barrier.wait()
    get = q.get
    pc = time.perf_counter
    c = 0
    tl = pc()
    while True:
        m = get()
        if m is None:
            break
        c += 1
        tl = pc()
    res.put(("c", tl, c))


# py_queue_tput_1p1c, py_queue_tput_2p2c  msg/s  50,000 messages through one
# mp.Queue, first put to last get
def bench_queue(total=50000):
    for np_, nc in ((1, 1), (2, 2)):
        vals = []
        for _ in range(REPS):
            q = mp.Queue()
            res = mp.Queue()
            bar = mp.Barrier(np_ + nc)
            prods = [mp.Process(target=_q_producer, args=(q, total // np_, bar, res))
                     for _ in range(np_)]
            cons = [mp.Process(target=_q_consumer, args=(q, bar, res)) for _ in range(nc)]
            for p in cons + prods:
                p.start()
            for p in prods:
                p.join()
            for _ in cons:
                q.put(None)
            rs = [res.get() for _ in range(np_ + nc)]
            for p in cons:
                p.join()
            start = min(r[1] for r in rs if r[0] == "p")
            end = max(r[1] for r in rs if r[0] == "c")
            got = sum(r[2] for r in rs if r[0] == "c")
            assert got == (total // np_) * np_, got
            vals.append(got / (end - start))
        report("py_queue_tput_%dp%dc" % (np_, nc), vals, "msg/s")


def _inc(v, n, bar, res):
    bar.wait()
    t0 = time.perf_counter()
    lock = v.get_lock()
    for _ in range(n):
        with lock:
            v.value += 1
    res.put((t0, time.perf_counter()))


# py_value_locked_incr_2proc  incr/s  2 processes x 100,000 increments of an
# mp.Value under its lock
def bench_value(n=100000, procs=2):
    vals = []
    for _ in range(REPS):
        v = mp.Value("i", 0)
        bar = mp.Barrier(procs)
        res = mp.Queue()
        ps = [mp.Process(target=_inc, args=(v, n, bar, res)) for _ in range(procs)]
        for p in ps:
            p.start()
        rs = [res.get() for _ in ps]
        for p in ps:
            p.join()
        assert v.value == n * procs, v.value
        vals.append(n * procs / (max(r[1] for r in rs) - min(r[0] for r in rs)))
    report("py_value_locked_incr_2proc", vals, "incr/s")


def _mgr_set(d, n, tag, bar, res):
    bar.wait()
    t0 = time.perf_counter()
    for i in range(n):
        d[(tag, i)] = PAYLOAD
    res.put((t0, time.perf_counter()))


# py_manager_dict_set_2proc  ops/s  2 processes x 5,000 sets into a Manager dict
def bench_manager(n=5000, procs=2):
    vals = []
    with mp.Manager() as m:
        for _ in range(REPS):
            d = m.dict()
            bar = mp.Barrier(procs)
            res = mp.Queue()
            ps = [mp.Process(target=_mgr_set, args=(d, n, k, bar, res)) for k in range(procs)]
            for p in ps:
                p.start()
            rs = [res.get() for _ in ps]
            for p in ps:
                p.join()
            assert len(d) == n * procs
            vals.append(n * procs / (max(r[1] for r in rs) - min(r[0] for r in rs)))
    report("py_manager_dict_set_2proc", vals, "ops/s")


SECTIONS = {
    "start": bench_start,
    "pool": bench_pool,
    "executor": bench_executor,
    "queue": bench_queue,
    "value": bench_value,
    "manager": bench_manager,
}

if __name__ == "__main__":
    names = sys.argv[1:] or list(SECTIONS)
    print("# python %s, start method default=%s, cpu_count=%d" % (
        sys.version.split()[0], mp.get_start_method(), os.cpu_count()), flush=True)
    for nm in names:
        SECTIONS[nm]()
