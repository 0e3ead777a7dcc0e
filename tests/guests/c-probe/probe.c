// The C twin of the Rust `sandbox-probe` and `hostile` guests, for the
// conformance suite (tests/it/conformance.rs): one protocol, every language.
// Built with Debian's clang and wasi-libc (WASI preview 1), bindings from
// `wit-bindgen c`, and linked into a component by wasm-component-ld with its
// preview-1-to-0.2 adapter (see mk/polyglot.mk).
//
// Each record's value is one command line; the sink runs it and stages one
// row {"cmd", "ok", "result"} per command to the `probe` table, one stage
// call per chunk. Errors are reported in the row as strerror(errno).
// Relative paths are joined onto /staging/.
//
//   write PATH CONTENT...  read PATH  open PATH (first 64 bytes)  list PATH
//   fill PATH BYTES  env  clock ("{wall_ns} {mono_ns} {mono_ns} {random hex}")
//
// Misbehaviours, which end the batch: loop, alloc, flood-log, flood-output
// (stages to table `hostile`), panic (abort() after a message on stderr).

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "sink.h"

extern char **environ;

// A growable byte buffer.
typedef struct {
    char *ptr;
    size_t len, cap;
} buf_t;

static void put(buf_t *b, const char *s, size_t n) {
    if (b->len + n + 1 > b->cap) {
        b->cap = (b->len + n + 1) * 2;
        b->ptr = realloc(b->ptr, b->cap);
        if (!b->ptr) abort();
    }
    memcpy(b->ptr + b->len, s, n);
    b->len += n;
    b->ptr[b->len] = 0;
}

static void puts_(buf_t *b, const char *s) { put(b, s, strlen(s)); }

// A JSON string literal (control characters, quotes and backslashes escaped;
// other bytes as they are: results are UTF-8 or lossy anyway).
static void put_json_string(buf_t *b, const char *s, size_t n) {
    puts_(b, "\"");
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[8];
        if (c == '"' || c == '\\') {
            esc[0] = '\\', esc[1] = (char)c;
            put(b, esc, 2);
        } else if (c < 0x20 || c >= 0x80) {
            // Non-ASCII is escaped byte-wise as U+00xx: lossy but valid JSON.
            snprintf(esc, sizeof esc, "\\u%04x", c);
            put(b, esc, 6);
        } else {
            put(b, (const char *)&c, 1);
        }
    }
    puts_(b, "\"");
}

static void resolve(const char *path, char *out, size_t size) {
    if (path[0] == '/') snprintf(out, size, "%s", path);
    else snprintf(out, size, "/staging/%s", path);
}

static void stage_rows(const char *table, char **rows, size_t n) {
    sink_string_t name, *list = calloc(n ? n : 1, sizeof *list);
    sink_string_set(&name, table);
    for (size_t i = 0; i < n; i++) sink_string_set(&list[i], rows[i]);
    sluice_sink_output_write_mode_t mode = {.tag = SLUICE_SINK_OUTPUT_WRITE_MODE_APPEND};
    sluice_sink_output_rows_t out = {.tag = SLUICE_SINK_OUTPUT_ROWS_JSON, .val.json = {list, n}};
    sluice_sink_output_stage_error_t err;
    if (!sluice_sink_output_stage(&name, &mode, &out, &err)) {
        fprintf(stderr, "staging failed\n");
        abort();
    }
    free(list);
}

static void log_info(const char *message) {
    sink_string_t m;
    sink_string_set(&m, message);
    sink_list_tuple2_string_string_t fields = {NULL, 0};
    sluice_sink_log_log(SLUICE_SINK_LOG_LEVEL_INFO, &m, &fields);
}

static int read_file(const char *path, size_t max, buf_t *out) {
    char full[4096];
    resolve(path, full, sizeof full);
    FILE *f = fopen(full, "rb");
    if (!f) return -1;
    char chunk[4096];
    size_t n;
    while (out->len < max && (n = fread(chunk, 1, sizeof chunk, f)) > 0) {
        put(out, chunk, n < max - out->len ? n : max - out->len);
    }
    fclose(f);
    return 0;
}

static int cmp_names(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static volatile unsigned long long sink_hole;

// Runs one command; returns 1 on success. `result` gets the answer or error.
static int run(const char *line, buf_t *result, struct timespec *started) {
    char cmd[64] = {0}, a1[1024] = {0}, a2[1024] = {0};
    sscanf(line, "%63s %1023s %1023s", cmd, a1, a2);
    char full[4096];
    if (!strcmp(cmd, "write") && a1[0]) {
        const char *content = strstr(line, a1) + strlen(a1);
        if (*content == ' ') content++;
        resolve(a1, full, sizeof full);
        FILE *f = fopen(full, "wb");
        if (!f) return 0;
        fputs(content, f);
        return fclose(f) == 0;
    }
    if ((!strcmp(cmd, "read") || !strcmp(cmd, "open")) && a1[0]) {
        return read_file(a1, !strcmp(cmd, "open") ? 64 : (size_t)-1, result) == 0;
    }
    if (!strcmp(cmd, "list") && a1[0]) {
        resolve(a1, full, sizeof full);
        DIR *d = opendir(full);
        if (!d) return 0;
        char *names[256];
        size_t n = 0;
        struct dirent *e;
        while ((e = readdir(d)) && n < 256) {
            if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) names[n++] = strdup(e->d_name);
        }
        closedir(d);
        qsort(names, n, sizeof *names, cmp_names);
        for (size_t i = 0; i < n; i++) {
            if (i) puts_(result, ",");
            puts_(result, names[i]);
            free(names[i]);
        }
        return 1;
    }
    if (!strcmp(cmd, "fill") && a1[0] && a2[0]) {
        unsigned long long want = strtoull(a2, NULL, 10), written = 0;
        static char zeros[65536];
        resolve(a1, full, sizeof full);
        FILE *f = fopen(full, "wb");
        if (!f) return 0;
        while (written < want) {
            size_t n = want - written < sizeof zeros ? (size_t)(want - written) : sizeof zeros;
            if (fwrite(zeros, 1, n, f) != n || fflush(f) != 0) {
                fclose(f);
                return 0;
            }
            written += n;
        }
        fclose(f);
        char num[32];
        snprintf(num, sizeof num, "%llu", written);
        puts_(result, num);
        return 1;
    }
    if (!strcmp(cmd, "env")) {
        size_t n = 0;
        for (char **e = environ; e && *e; e++) n++;
        char text[64];
        snprintf(text, sizeof text, "vars=%zu [] args=[]", n);
        puts_(result, text);
        return 1;
    }
    if (!strcmp(cmd, "clock")) {
        struct timespec wall, m1, m2;
        clock_gettime(CLOCK_REALTIME, &wall);
        clock_gettime(CLOCK_MONOTONIC, &m1);
        clock_gettime(CLOCK_MONOTONIC, &m2);
        unsigned char random[16];
        if (getentropy(random, sizeof random) != 0) return 0;
        long long s0 = (long long)started->tv_sec * 1000000000LL + started->tv_nsec;
        char text[160];
        int at = snprintf(text, sizeof text, "%lld %lld %lld ", (long long)wall.tv_sec * 1000000000LL + wall.tv_nsec,
                          (long long)m1.tv_sec * 1000000000LL + m1.tv_nsec - s0,
                          (long long)m2.tv_sec * 1000000000LL + m2.tv_nsec - s0);
        for (int i = 0; i < 16; i++) at += snprintf(text + at, sizeof text - at, "%02x", random[i]);
        puts_(result, text);
        return 1;
    }
    if (!strcmp(cmd, "loop")) {
        for (unsigned long long n = 0;; n++) sink_hole = n;
    }
    if (!strcmp(cmd, "alloc")) {
        for (;;) {
            char *block = malloc(1 << 20);
            if (!block) abort();
            memset(block, 1, 1 << 20);
            sink_hole += (unsigned char)block[4096];
        }
    }
    if (!strcmp(cmd, "flood-log")) {
        for (;;) log_info("flooding the batch log");
    }
    if (!strcmp(cmd, "flood-output")) {
        char *row = "{\"flood\":1}";
        for (;;) stage_rows("hostile", &row, 1);
    }
    if (!strcmp(cmd, "panic")) {
        fprintf(stderr, "sink panicked on purpose\n");
        abort();
    }
    errno = 0;
    puts_(result, "unknown command");
    return -1;
}

bool exports_sluice_sink_handler_for_each_batch(exports_sluice_sink_handler_batch_info_t *batch,
                                                exports_sluice_sink_handler_own_record_stream_t records,
                                                exports_sluice_sink_handler_sink_error_t *err) {
    (void)err;
    struct timespec started;
    clock_gettime(CLOCK_MONOTONIC, &started);
    sluice_sink_records_borrow_record_stream_t stream = sluice_sink_records_borrow_record_stream(records);
    sluice_sink_records_record_chunk_t chunk;
    while (sluice_sink_records_method_record_stream_next_chunk(stream, &chunk)) {
        size_t n = chunk.sources.len, pos = 0, header = 0;
        char **rows = calloc(n ? n : 1, sizeof *rows);
        for (size_t i = 0; i < n; i++) {
            // Walk `data`: key, value, then each header's key and value.
            int32_t key_len = chunk.key_lens.ptr[i], value_len = chunk.value_lens.ptr[i];
            if (key_len > 0) pos += (size_t)key_len;
            char *line = strndup(value_len > 0 ? (const char *)chunk.data.ptr + pos : "", value_len > 0 ? (size_t)value_len : 0);
            if (value_len > 0) pos += (size_t)value_len;
            for (uint32_t h = 0; h < chunk.header_counts.ptr[i]; h++, header++) {
                pos += chunk.header_key_lens.ptr[header];
                if (chunk.header_value_lens.ptr[header] > 0) pos += (size_t)chunk.header_value_lens.ptr[header];
            }
            buf_t result = {0}, row = {0};
            errno = 0;
            int ok = run(line, &result, &started);
            if (ok == 0) {
                result.len = 0;
                puts_(&result, strerror(errno));
            }
            puts_(&row, "{\"cmd\":");
            put_json_string(&row, line, strlen(line));
            puts_(&row, ok == 1 ? ",\"ok\":true,\"result\":" : ",\"ok\":false,\"result\":");
            put_json_string(&row, result.ptr ? result.ptr : "", result.len);
            puts_(&row, "}");
            rows[i] = row.ptr;
            free(result.ptr);
            free(line);
        }
        if (n) stage_rows("probe", rows, n);
        for (size_t i = 0; i < n; i++) free(rows[i]);
        free(rows);
        sluice_sink_records_record_chunk_free(&chunk);
    }
    sluice_sink_records_record_stream_drop_own(records);
    exports_sluice_sink_handler_batch_info_free(batch);
    return true;
}
