/* A tracker-daemon client in C, written from client/PROTOCOL.md alone (libzmq + msgpack-c).
 *
 * It is the conformance check of the spec for a language without the Python client: one DEALER
 * socket, single-frame msgpack envelopes [1, kind, body], sequenced `data` / `artifact` messages
 * kept until acked, barriers, staging (section 5.3), and the reconnect procedure of section 9.6
 * (connection events from a socket monitor, `hello` with `acked_floor`, resend after the
 * `welcome`). tests/integration/test_conformance.py builds it with `cc` and drives it:
 *
 *   client vectors                  print the hex of its encoding of some section 13 vectors
 *   client run ADDRESS EXPERIMENT   the scenario in main(); prints READY, then twice reads a
 *                                   line on stdin and prints SENT (the test stops, kills and
 *                                   restarts the daemon meanwhile), then DONE
 *
 * Build: cc -std=c11 -Wall -Wextra -Werror -o client client.c -lzmq -lmsgpackc
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <msgpack.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#define MAX_KEPT 64 /* in-flight window (section 9.3) */
#define TIMEOUT_MS 90000

static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "client: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(2);
}

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void random_hex(char *out, size_t n) { /* n hex digits + NUL */
    unsigned char b[64];
    int fd = open("/dev/urandom", O_RDONLY);
    if (fd < 0 || read(fd, b, (n + 1) / 2) != (ssize_t)((n + 1) / 2)) die("urandom");
    close(fd);
    for (size_t i = 0; i < n; i++) out[i] = "0123456789abcdef"[(b[i / 2] >> (i % 2 ? 0 : 4)) & 15];
    out[n] = 0;
}

/* ---------------------------------------------------------------- encoding (section 2) */

typedef struct {
    msgpack_sbuffer buf;
    msgpack_packer pk;
} Enc;

static void enc_begin(Enc *e, const char *kind, size_t fields) {
    msgpack_sbuffer_init(&e->buf);
    msgpack_packer_init(&e->pk, &e->buf, msgpack_sbuffer_write);
    msgpack_pack_array(&e->pk, 3);
    msgpack_pack_int64(&e->pk, 1);
    msgpack_pack_str_with_body(&e->pk, kind, strlen(kind));
    msgpack_pack_map(&e->pk, fields);
}

static void put_str(Enc *e, const char *s) {
    if (s == NULL) msgpack_pack_nil(&e->pk);
    else msgpack_pack_str_with_body(&e->pk, s, strlen(s));
}
static void key(Enc *e, const char *k) { put_str(e, k); }
static void kv_str(Enc *e, const char *k, const char *v) { key(e, k); put_str(e, v); }
static void kv_int(Enc *e, const char *k, int64_t v) { key(e, k); msgpack_pack_int64(&e->pk, v); }
static void kv_map1(Enc *e, const char *k, const char *mk, const char *mv) {
    key(e, k);
    msgpack_pack_map(&e->pk, mk ? 1 : 0);
    if (mk) { put_str(e, mk); put_str(e, mv); }
}

/* records (section 7) */
static void rec_metric(Enc *e, const char *run, const char *k, double v, int64_t ts, int64_t step) {
    msgpack_pack_array(&e->pk, 9);
    put_str(e, "m"); put_str(e, run); put_str(e, k);
    msgpack_pack_double(&e->pk, v);
    msgpack_pack_int64(&e->pk, ts);
    msgpack_pack_int64(&e->pk, step);
    msgpack_pack_nil(&e->pk); msgpack_pack_nil(&e->pk); msgpack_pack_nil(&e->pk);
}
static void rec_kv(Enc *e, const char *kind, const char *run, const char *k, const char *v) {
    msgpack_pack_array(&e->pk, 4);
    put_str(e, kind); put_str(e, run); put_str(e, k); put_str(e, v);
}

/* ---------------------------------------------------------------- messages (section 5) */

typedef struct {
    const char *experiment_id, *experiment_name, *run_id, *run_name, *parent_run_id;
    const char *tag_k, *tag_v, *exp_tag_k, *exp_tag_v, *artifact_location, *resume, *offline_id;
    int64_t start_time;
} StartRun;

static void enc_hello(Enc *e, int64_t req, const char *cid, int64_t pid, const char *host,
                      int64_t floor) {
    enc_begin(e, "hello", 6);
    kv_int(e, "req", req); kv_str(e, "client_id", cid); kv_int(e, "pid", pid);
    kv_str(e, "host", host); kv_str(e, "version", "0.1.0"); kv_int(e, "acked_floor", floor);
}

static void enc_start_run(Enc *e, int64_t req, const char *cid, const StartRun *s) {
    enc_begin(e, "start_run", 13);
    kv_int(e, "req", req); kv_str(e, "client_id", cid);
    kv_str(e, "experiment_id", s->experiment_id); kv_str(e, "experiment_name", s->experiment_name);
    kv_str(e, "run_id", s->run_id); kv_str(e, "run_name", s->run_name);
    kv_str(e, "parent_run_id", s->parent_run_id); kv_map1(e, "tags", s->tag_k, s->tag_v);
    kv_int(e, "start_time", s->start_time); kv_str(e, "offline_id", s->offline_id);
    kv_map1(e, "experiment_tags", s->exp_tag_k, s->exp_tag_v);
    kv_str(e, "artifact_location", s->artifact_location); kv_str(e, "resume", s->resume);
}

static void enc_barrier(Enc *e, const char *kind, int64_t req, const char *cid, int64_t seq,
                        const char *run, const char *status, int64_t end_time) {
    enc_begin(e, kind, status ? 6 : 4);
    kv_int(e, "req", req); kv_str(e, "client_id", cid); kv_int(e, "seq", seq);
    kv_str(e, "run_id", run);
    if (status) { kv_str(e, "status", status); kv_int(e, "end_time", end_time); }
}

static void enc_artifact(Enc *e, const char *cid, int64_t seq, const char *run, const char *staged,
                         const char *artifact_path) {
    enc_begin(e, "artifact", 5);
    kv_str(e, "client_id", cid); kv_int(e, "seq", seq); kv_str(e, "run_id", run);
    kv_str(e, "staged_path", staged); kv_str(e, "artifact_path", artifact_path);
}

/* a data frame: the caller packs `n` records after this */
static void enc_data(Enc *e, const char *cid, int64_t seq, size_t n) {
    enc_begin(e, "data", 3);
    kv_str(e, "client_id", cid); kv_int(e, "seq", seq);
    key(e, "records");
    msgpack_pack_array(&e->pk, n);
}

/* ---------------------------------------------------------------- decoding (section 3) */

typedef struct {
    msgpack_unpacked up;
    char kind[32];
    msgpack_object body;
} Reply;

static const msgpack_object *field(const Reply *r, const char *name) {
    for (uint32_t i = 0; i < r->body.via.map.size; i++) {
        msgpack_object k = r->body.via.map.ptr[i].key;
        if (k.type == MSGPACK_OBJECT_STR && k.via.str.size == strlen(name) &&
            memcmp(k.via.str.ptr, name, k.via.str.size) == 0)
            return &r->body.via.map.ptr[i].val;
    }
    die("%s: no field %s", r->kind, name);
    return NULL;
}
static int64_t f_int(const Reply *r, const char *name) { /* nil -> -1 */
    const msgpack_object *o = field(r, name);
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER) return (int64_t)o->via.u64;
    if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) return o->via.i64;
    if (o->type == MSGPACK_OBJECT_NIL) return -1;
    die("%s.%s: not an int", r->kind, name);
    return 0;
}
static void f_str(const Reply *r, const char *name, char *out, size_t cap) {
    const msgpack_object *o = field(r, name);
    if (o->type != MSGPACK_OBJECT_STR || o->via.str.size >= cap) die("%s.%s: bad str", r->kind, name);
    memcpy(out, o->via.str.ptr, o->via.str.size);
    out[o->via.str.size] = 0;
}

static int decode(const void *data, size_t len, Reply *r) {
    size_t off = 0;
    msgpack_unpacked_init(&r->up);
    if (msgpack_unpack_next(&r->up, data, len, &off) != MSGPACK_UNPACK_SUCCESS || off != len)
        return -1;
    msgpack_object o = r->up.data;
    if (o.type != MSGPACK_OBJECT_ARRAY || o.via.array.size != 3) return -1;
    msgpack_object v = o.via.array.ptr[0], k = o.via.array.ptr[1], b = o.via.array.ptr[2];
    if (v.type != MSGPACK_OBJECT_POSITIVE_INTEGER || v.via.u64 != 1) return -1;
    if (k.type != MSGPACK_OBJECT_STR || k.via.str.size >= sizeof r->kind) return -1;
    if (b.type != MSGPACK_OBJECT_MAP) return -1;
    memcpy(r->kind, k.via.str.ptr, k.via.str.size);
    r->kind[k.via.str.size] = 0;
    r->body = b;
    return 0;
}

/* ---------------------------------------------------------------- session (section 9) */

typedef struct {
    void *ctx, *sock, *mon;
    char cid[33], host[64], staging[512];
    int64_t seq, acked, next_req, resend_req;
    int connections;
    struct { int64_t seq; char *data; size_t len; } kept[MAX_KEPT]; /* unacked, by seq */
    int nkept;
    int64_t pending_req; /* the one request waiting for its reply (0: none) */
    char *pending; size_t pending_len;
} Client;

static int raw_send(Client *c, const void *data, size_t len) {
    /* ZMQ_IMMEDIATE is set: with no connection this fails (EAGAIN), and the message stays kept
       for the resend after the next welcome (section 1). Returns 0 when it went out. */
    if (zmq_send(c->sock, data, len, ZMQ_DONTWAIT) >= 0) return 0;
    if (errno != EAGAIN) die("send: %s", zmq_strerror(errno));
    return -1;
}

static void on_acked(Client *c, int64_t upto) {
    if (upto > c->seq) upto = c->seq; /* only what was sent */
    if (upto > c->acked) c->acked = upto;
    int j = 0;
    for (int i = 0; i < c->nkept; i++) {
        if (c->kept[i].seq <= c->acked) free(c->kept[i].data);
        else c->kept[j++] = c->kept[i];
    }
    c->nkept = j;
}

static void send_hello(Client *c, int resend) {
    Enc e;
    int64_t req = ++c->next_req;
    if (resend) c->resend_req = req;
    enc_hello(&e, req, c->cid, getpid(), c->host, c->acked);
    /* the connected event may come before the connection takes messages: retry a little */
    struct timespec pause = {0, 10 * 1000000};
    for (int i = 0; i < 500 && raw_send(c, e.buf.data, e.buf.size) < 0; i++) nanosleep(&pause, NULL);
    msgpack_sbuffer_destroy(&e.buf);
}

static void on_monitor(Client *c) {
    zmq_msg_t m;
    zmq_msg_init(&m);
    if (zmq_msg_recv(&m, c->mon, 0) < 0) die("monitor");
    uint16_t event;
    memcpy(&event, zmq_msg_data(&m), 2);
    zmq_msg_close(&m);
    zmq_msg_init(&m); /* second frame: the endpoint */
    zmq_msg_recv(&m, c->mon, 0);
    zmq_msg_close(&m);
    if (event == ZMQ_EVENT_CONNECTED && ++c->connections > 1) send_hello(c, 1); /* section 9.6 */
}

/* Take one frame from the daemon. Returns 1 with *r filled when it is a reply to `want_req`. */
static int on_frame(Client *c, const void *data, size_t len, int64_t want_req, Reply *r) {
    if (decode(data, len, r) < 0) die("undecodable frame from the daemon");
    if (strcmp(r->kind, "ack") == 0) {
        on_acked(c, f_int(r, "seq"));
    } else if (strcmp(r->kind, "welcome") == 0) {
        on_acked(c, f_int(r, "acked_seq"));
        f_str(r, "staging_dir", c->staging, sizeof c->staging);
        if (f_int(r, "req") == c->resend_req) { /* resend kept frames, then the request */
            c->resend_req = -1;
            for (int i = 0; i < c->nkept; i++) raw_send(c, c->kept[i].data, c->kept[i].len);
            if (c->pending_req) raw_send(c, c->pending, c->pending_len);
        }
    } else if (strcmp(r->kind, "error") == 0 && f_int(r, "req") == -1) {
        char msg[512];
        f_str(r, "message", msg, sizeof msg);
        fprintf(stderr, "client: daemon error about no request: %s\n", msg);
    }
    /* "accepted" (an end_run is held by the daemon) comes before its "done": wait on */
    if (want_req && strcmp(r->kind, "ack") != 0 && strcmp(r->kind, "accepted") != 0 &&
        f_int(r, "req") == want_req)
        return 1;
    msgpack_unpacked_destroy(&r->up);
    return 0;
}

/* Poll socket and monitor until a reply to `req` (0: until `until_acked` is acked). */
static void pump(Client *c, int64_t req, int64_t until_acked, Reply *r) {
    Reply scratch;
    if (r == NULL) r = &scratch;
    int64_t deadline = now_ms() + TIMEOUT_MS;
    while (req ? 1 : c->acked < until_acked) {
        zmq_pollitem_t items[] = {{c->sock, 0, ZMQ_POLLIN, 0}, {c->mon, 0, ZMQ_POLLIN, 0}};
        if (now_ms() > deadline) die("timeout waiting for req %lld / seq %lld", (long long)req, (long long)until_acked);
        if (zmq_poll(items, 2, 200) < 0) die("poll");
        if (items[1].revents & ZMQ_POLLIN) on_monitor(c);
        if (items[0].revents & ZMQ_POLLIN) {
            zmq_msg_t m;
            zmq_msg_init(&m);
            if (zmq_msg_recv(&m, c->sock, 0) < 0) die("recv");
            int got = on_frame(c, zmq_msg_data(&m), zmq_msg_size(&m), req, r);
            zmq_msg_close(&m);
            if (got) return;
        }
    }
}

static void request(Client *c, Enc *e, int64_t req, Reply *r) {
    c->pending_req = req;
    c->pending = e->buf.data;
    c->pending_len = e->buf.size;
    raw_send(c, e->buf.data, e->buf.size);
    pump(c, req, 0, r);
    c->pending_req = 0;
    msgpack_sbuffer_destroy(&e->buf);
}

static void send_sequenced(Client *c, Enc *e) { /* e was built with seq = c->seq + 1 */
    if (c->nkept == MAX_KEPT) pump(c, 0, c->kept[0].seq, NULL); /* window full: wait */
    c->seq++;
    c->kept[c->nkept].seq = c->seq;
    c->kept[c->nkept].len = e->buf.size;
    c->kept[c->nkept].data = msgpack_sbuffer_release(&e->buf);
    raw_send(c, c->kept[c->nkept].data, c->kept[c->nkept].len);
    c->nkept++;
}

/* ---------------------------------------------------------------- operations */

static void start_run(Client *c, const StartRun *s, char *run_id, size_t cap) {
    Enc e;
    Reply r;
    int64_t req = ++c->next_req;
    enc_start_run(&e, req, c->cid, s);
    request(c, &e, req, &r);
    if (strcmp(r.kind, "run") != 0) {
        char msg[512];
        f_str(&r, "message", msg, sizeof msg);
        die("start_run: %s", msg);
    }
    f_str(&r, "run_id", run_id, cap);
    msgpack_unpacked_destroy(&r.up);
}

/* flush (status NULL) or end_run; returns the number of failures, printing each */
static int barrier(Client *c, const char *run, const char *status) {
    Enc e;
    Reply r;
    int64_t req = ++c->next_req;
    enc_barrier(&e, status ? "end_run" : "flush", req, c->cid, c->seq, run, status, now_ms());
    request(c, &e, req, &r);
    if (strcmp(r.kind, "done") != 0) die("barrier: got %s", r.kind);
    on_acked(c, c->seq); /* done implies every seq up to the barrier's was accepted */
    const msgpack_object *f = field(&r, "failures");
    int n = (int)f->via.array.size;
    for (int i = 0; i < n; i++) {
        msgpack_object msg = f->via.array.ptr[i].via.array.ptr[2];
        printf("FAILURE %.*s\n", (int)msg.via.str.size, msg.via.str.ptr);
    }
    msgpack_unpacked_destroy(&r.up);
    return n;
}

/* section 5.3: copy into <staging>/<client_id>/<uuid>/<name>, modes 2770 / 0640 */
static void log_text_artifact(Client *c, const char *run, const char *name, const char *text,
                              const char *artifact_path) {
    char dir[700], slot[33], path[800];
    snprintf(dir, sizeof dir, "%s/%s", c->staging, c->cid);
    if (mkdir(dir, 02770) < 0 && errno != EEXIST) die("mkdir %s: %s", dir, strerror(errno));
    chmod(dir, 02770);
    random_hex(slot, 32);
    snprintf(dir, sizeof dir, "%s/%s/%s", c->staging, c->cid, slot);
    if (mkdir(dir, 02770) < 0 || chmod(dir, 02770) < 0) die("mkdir %s: %s", dir, strerror(errno));
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *fh = fopen(path, "w");
    if (fh == NULL || fputs(text, fh) < 0 || fclose(fh) != 0) die("write %s", path);
    chmod(path, 0640);
    Enc e;
    enc_artifact(&e, c->cid, c->seq + 1, run, path, artifact_path);
    send_sequenced(c, &e);
}

static void connect_client(Client *c, const char *address) {
    int one = 1, zero = 0;
    random_hex(c->cid, 32);
    gethostname(c->host, sizeof c->host - 1);
    c->ctx = zmq_ctx_new();
    c->sock = zmq_socket(c->ctx, ZMQ_DEALER);
    zmq_setsockopt(c->sock, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(c->sock, ZMQ_IMMEDIATE, &one, sizeof one);
    if (zmq_socket_monitor(c->sock, "inproc://monitor", ZMQ_EVENT_CONNECTED) < 0) die("monitor");
    c->mon = zmq_socket(c->ctx, ZMQ_PAIR);
    zmq_connect(c->mon, "inproc://monitor");
    if (zmq_connect(c->sock, address) < 0) die("connect %s: %s", address, zmq_strerror(errno));
    c->resend_req = -1;
    /* the first hello goes once connected (IMMEDIATE would drop it otherwise) */
    int64_t deadline = now_ms() + TIMEOUT_MS;
    while (c->connections == 0) {
        zmq_pollitem_t it = {c->mon, 0, ZMQ_POLLIN, 0};
        if (now_ms() > deadline) die("no daemon at %s", address);
        if (zmq_poll(&it, 1, 200) > 0) on_monitor(c);
    }
    Reply r;
    send_hello(c, 0);
    pump(c, c->next_req, 0, &r);
    if (strcmp(r.kind, "welcome") != 0) die("hello: got %s", r.kind);
    msgpack_unpacked_destroy(&r.up);
}

/* ---------------------------------------------------------------- main */

static void print_hex(const char *name, Enc *e) {
    printf("%s", name);
    for (size_t i = 0; i < e->buf.size; i++) printf(" %02x", (unsigned char)e->buf.data[i]);
    printf("\n");
    msgpack_sbuffer_destroy(&e->buf);
}

static int vectors(void) { /* the values of PROTOCOL.md section 13 */
    const char *cid = "6f1c2a9e0b3d4c5e8f7a1b2c3d4e5f60", *run = "a1b2c3d4e5f60718293a4b5c6d7e8f90";
    Enc e;
    enc_hello(&e, 1, cid, 4242, "gpu-node-01", 0);
    print_hex("hello", &e);
    StartRun s = {.experiment_name = "resnet50", .run_name = "nightly", .tag_k = "team",
                  .tag_v = "vision", .exp_tag_k = "owner", .exp_tag_v = "vision",
                  .artifact_location = "/data/mlartifacts/resnet50", .resume = "by_name",
                  .offline_id = "offline-7b52009b64fd0a2a49e6d8a939753077",
                  .start_time = 1700000300000};
    enc_start_run(&e, 13, cid, &s);
    print_hex("start_run_by_name", &e);
    enc_data(&e, cid, 2, 3);
    rec_metric(&e, run, "loss", NAN, 1700000002000, 2);
    msgpack_pack_array(&e.pk, 9);
    put_str(&e, "m"); put_str(&e, run); put_str(&e, "val_acc");
    msgpack_pack_double(&e.pk, 0.875);
    msgpack_pack_int64(&e.pk, 1700000002000); msgpack_pack_int64(&e.pk, 2);
    put_str(&e, "m-0f9e8d7c6b5a49382716051f2e3d4c5b"); put_str(&e, "imagenet-val");
    put_str(&e, "3f2a9c1e");
    rec_metric(&e, run, "grad_norm", INFINITY, 1700000002000, -1);
    print_hex("data_nan_dataset", &e);
    enc_artifact(&e, cid, 3, run,
                 "/var/lib/tracker-daemon/staging/6f1c2a9e0b3d4c5e8f7a1b2c3d4e5f60/"
                 "3e7a1c5b9d2f4e6a8b0c1d2e3f4a5b6c/model.pt", "checkpoints");
    print_hex("artifact", &e);
    enc_barrier(&e, "flush", 5, cid, 3, NULL, NULL, 0);
    print_hex("flush_all", &e);
    enc_barrier(&e, "end_run", 6, cid, 3, run, "FINISHED", 1700000100000);
    print_hex("end_run", &e);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 2 && strcmp(argv[1], "vectors") == 0) return vectors();
    if (argc != 4 || strcmp(argv[1], "run") != 0) die("usage: client vectors | client run ADDRESS EXPERIMENT");
    setvbuf(stdout, NULL, _IOLBF, 0);
    static Client c;
    connect_client(&c, argv[2]);
    const char *exp = argv[3];
    char a[300], b[300], again[300];
    int64_t t0 = now_ms();
    StartRun sa = {.experiment_name = exp, .run_name = "c-finished", .tag_k = "lang", .tag_v = "c",
                   .exp_tag_k = "client", .exp_tag_v = "conformance-c", .start_time = t0};
    start_run(&c, &sa, a, sizeof a);
    StartRun sb = {.experiment_name = exp, .run_name = "c-failed", .start_time = t0};
    start_run(&c, &sb, b, sizeof b);

    Enc e;
    enc_data(&e, c.cid, c.seq + 1, 7); /* seq 1 */
    rec_metric(&e, a, "loss", 0.5, t0, 0);
    rec_metric(&e, a, "loss", NAN, t0 + 1, 1);
    rec_metric(&e, a, "loss", INFINITY, t0 + 2, 2);
    rec_metric(&e, a, "loss", -INFINITY, t0 + 3, 3);
    rec_kv(&e, "p", a, "lr", "0.01");
    rec_kv(&e, "p", a, "batch_size", "32");
    rec_kv(&e, "t", a, "phase", "train");
    size_t first_len = e.buf.size; /* a copy of seq 1, resent at the end */
    char *first = malloc(first_len);
    memcpy(first, e.buf.data, first_len);
    send_sequenced(&c, &e);
    enc_data(&e, c.cid, c.seq + 1, 2); /* seq 2 */
    rec_metric(&e, b, "loss", 1.0, t0, 0);
    rec_kv(&e, "p", b, "lr", "0.1");
    send_sequenced(&c, &e);
    log_text_artifact(&c, a, "notes.txt", "logged from C\n", "docs"); /* seq 3 */
    int failures = barrier(&c, a, NULL);
    printf("READY %s %s %d\n", a, b, failures);

    char line[64];
    for (int phase = 0; phase < 2; phase++) {
        /* the test stops the daemon (SIGSTOP: seqs 4..8 go out and are never read), then kills
           it (-9: seqs 9..13 find no connection); each time it writes a line */
        if (fgets(line, sizeof line, stdin) == NULL) die("stdin closed");
        for (int step = 10 + 5 * phase; step < 15 + 5 * phase; step++) {
            enc_data(&e, c.cid, c.seq + 1, 2);
            rec_metric(&e, a, "loss", step / 100.0, t0 + step, step);
            rec_metric(&e, b, "loss", -step, t0 + step, step);
            send_sequenced(&c, &e);
        }
        printf("SENT %lld unacked %d\n", (long long)c.seq, c.nkept);
    }
    pump(&c, 0, c.seq, NULL); /* the restarted daemon acks them after the resend */
    if (raw_send(&c, first, first_len) < 0) die("resend of seq 1: not connected");
    /* ^ a resend of seq 1, which the killed daemon had committed: dropped, acked again */
    free(first);
    failures += barrier(&c, NULL, NULL);
    failures += barrier(&c, a, "FINISHED");
    failures += barrier(&c, b, "FAILED");
    StartRun sr = {.experiment_name = exp, .run_name = "c-finished", .resume = "by_name",
                   .start_time = now_ms()}; /* find-or-create: resumes run a */
    start_run(&c, &sr, again, sizeof again);
    failures += barrier(&c, again, "FINISHED");
    printf("DONE %s %d\n", again, failures);
    zmq_close(c.mon);
    zmq_close(c.sock);
    zmq_ctx_term(c.ctx);
    return 0;
}
