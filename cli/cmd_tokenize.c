/* kvforge tokenize --tokenizer FILE [--decode] [--json]: stdin text → ids, or ids → text */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>

#include "cli.h"
#include "data/tokenizer_load.h"

static char *read_stdin(size_t *len) {
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    size_t k;
    while (buf && (k = fread(buf + n, 1, cap - n, stdin)) > 0) {
        n += k;
        if (n == cap) {
            char *nb = realloc(buf, cap *= 2);
            if (!nb) {
                free(buf);
                return NULL;
            }
            buf = nb;
        }
    }
    *len = n;
    return buf;
}

int kvf_cmd_tokenize(int argc, char **argv) {
    static const struct option opts[] = {{"tokenizer", required_argument, 0, 't'},
                                         {"decode", no_argument, 0, 'd'},
                                         {"json", no_argument, 0, 'j'},
                                         {0, 0, 0, 0}};
    const char *spec = NULL;
    bool decode = false, json = false;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (c == 't') spec = optarg;
        else if (c == 'd') decode = true;
        else if (c == 'j') json = true;
        else return kvf_cli_fail(KVF_EXIT_USAGE, "tokenize: see kvforge tokenize --help");
    }
    if (!spec || optind != argc) return kvf_cli_fail(KVF_EXIT_USAGE, "tokenize: --tokenizer FILE is required");
    kvf_tokenizer *tok = kvf_tokenizer_open(spec);
    if (!tok) return kvf_cli_fail_lib("tokenize");
    size_t len;
    char *in = read_stdin(&len);
    if (!in) {
        kvf_tokenizer_free(tok);
        return kvf_cli_fail(KVF_EXIT_RUNTIME, "tokenize: cannot read stdin");
    }
    int rc = KVF_EXIT_OK;
    kvf_ids ids = {0};
    if (decode) {
        /* ids separated by spaces, commas or brackets (a JSON array works too) */
        char *p = in, *end = in + len;
        while (p < end && rc == KVF_EXIT_OK) {
            while (p < end && (*p == ' ' || *p == ',' || *p == '\n' || *p == '\t' || *p == '[' || *p == ']' || *p == '\r')) p++;
            if (p >= end) break;
            char *q;
            long v = strtol(p, &q, 10);
            if (q == p) rc = kvf_cli_fail(KVF_EXIT_RUNTIME, "tokenize --decode: '%.20s' is not a token id", p);
            else kvf_ids_push(&ids, (int32_t)v);
            p = q;
        }
        kvf_bytes text = {0};
        if (rc == KVF_EXIT_OK && kvf_tokenizer_decode(tok, ids.data, ids.count, &text) != KVF_OK)
            rc = kvf_cli_fail_lib("tokenize");
        else if (rc == KVF_EXIT_OK && json) {
            putchar('"');
            for (size_t i = 0; i < text.len; i++) {
                unsigned char ch = (unsigned char)text.data[i];
                if (ch == '"' || ch == '\\') printf("\\%c", ch);
                else if (ch < 0x20) printf("\\u%04x", ch);
                else putchar(ch);
            }
            puts("\"");
        } else if (rc == KVF_EXIT_OK) {
            fwrite(text.data, 1, text.len, stdout);
        }
        kvf_bytes_free(&text);
    } else if (kvf_tokenizer_encode(tok, in, len, &ids) != KVF_OK) {
        rc = kvf_cli_fail_lib("tokenize");
    } else {
        if (json) putchar('[');
        for (int64_t i = 0; i < ids.count; i++)
            printf(i ? (json ? ", %d" : " %d") : "%d", ids.data[i]);
        puts(json ? "]" : "");
    }
    kvf_ids_free(&ids);
    free(in);
    kvf_tokenizer_free(tok);
    return rc;
}
