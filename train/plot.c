#include "plot.h"

#include "model/hf_config.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct series {
    double *x, *y;
    int n, cap;
};

struct run_data {
    char name[128];
    struct series train, val;
};

static kvf_status push(struct series *s, double x, double y) {
    if (s->n == s->cap) {
        int cap = s->cap ? 2 * s->cap : 256;
        double *nx = realloc(s->x, sizeof(double) * (size_t)cap);
        if (!nx) return kvf_error_set(KVF_ERR_OOM, "plot: out of memory");
        s->x = nx;
        double *ny = realloc(s->y, sizeof(double) * (size_t)cap);
        if (!ny) return kvf_error_set(KVF_ERR_OOM, "plot: out of memory");
        s->y = ny;
        s->cap = cap;
    }
    s->x[s->n] = x;
    s->y[s->n++] = y;
    return KVF_OK;
}

static void run_name(const char *path, char *out, size_t n) {
    /* runs/NAME/metrics.jsonl → NAME; otherwise the file name */
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", path);
    char *slash = strrchr(buf, '/');
    if (slash && !strcmp(slash + 1, "metrics.jsonl")) {
        *slash = '\0';
        char *p = strrchr(buf, '/');
        snprintf(out, n, "%s", p ? p + 1 : buf);
    } else {
        snprintf(out, n, "%s", slash ? slash + 1 : buf);
    }
}

static kvf_status read_run(const char *path, struct run_data *r) {
    FILE *f = fopen(path, "rb");
    if (!f) return kvf_error_set(KVF_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    run_name(path, r->name, sizeof r->name);
    char *line = NULL;
    size_t cap = 0;
    int lineno = 0;
    kvf_status st = KVF_OK;
    while (st == KVF_OK && getline(&line, &cap, f) > 0) {
        lineno++;
        if (line[0] == '\n' || line[0] == '\0') continue;
        json_error_t e;
        json_t *j = json_loads(line, 0, &e);
        if (!j || !json_is_object(j)) {
            st = kvf_error_set(KVF_ERR_FORMAT, "%s:%d: not a JSON object: %s", path, lineno,
                               j ? "another JSON value" : e.text);
            json_decref(j);
            break;
        }
        json_t *step = json_object_get(j, "step"), *loss = json_object_get(j, "loss"),
               *val = json_object_get(j, "val_loss");
        if (!json_is_integer(step)) {
            st = kvf_error_set(KVF_ERR_FORMAT, "%s:%d: no integer \"step\"", path, lineno);
        } else if (!json_is_true(json_object_get(j, "skipped"))) {
            double x = (double)json_integer_value(step);
            if (json_is_number(loss)) st = push(&r->train, x, json_number_value(loss));
            if (st == KVF_OK && json_is_number(val)) st = push(&r->val, x, json_number_value(val));
        }
        json_decref(j);
    }
    free(line);
    fclose(f);
    if (st == KVF_OK && r->train.n == 0 && r->val.n == 0)
        st = kvf_error_set(KVF_ERR_FORMAT, "%s: no loss values to plot", path);
    return st;
}

static const char *colors[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e",
                               "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"};

static double nice_step(double range) {
    double raw = range / 6, mag = pow(10, floor(log10(raw))), f = raw / mag;
    return (f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10) * mag;
}

kvf_status kvf_plot_svg(const char *const *paths, int n, const char *out_path) {
    KVF_CHECK(n >= 1, KVF_ERR_ARG, "plot: give at least one metrics.jsonl");
    struct run_data *runs = calloc((size_t)n, sizeof *runs);
    KVF_CHECK(runs, KVF_ERR_OOM, "plot: out of memory");
    kvf_status st = KVF_OK;
    double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
    for (int i = 0; i < n && st == KVF_OK; i++) {
        st = read_run(paths[i], &runs[i]);
        struct series *ss[2] = {&runs[i].train, &runs[i].val};
        for (int k = 0; k < 2 && st == KVF_OK; k++)
            for (int j = 0; j < ss[k]->n; j++) {
                x0 = fmin(x0, ss[k]->x[j]);
                x1 = fmax(x1, ss[k]->x[j]);
                if (isfinite(ss[k]->y[j])) {
                    y0 = fmin(y0, ss[k]->y[j]);
                    y1 = fmax(y1, ss[k]->y[j]);
                }
            }
    }
    if (st == KVF_OK) {
        if (x1 <= x0) x1 = x0 + 1;
        if (y1 <= y0) y1 = y0 + 1;
        double ys = nice_step(y1 - y0), xs = nice_step(x1 - x0);
        y0 = floor(y0 / ys) * ys;
        y1 = ceil(y1 / ys) * ys;
        const double W = 800, H = 500, L = 70, R = 220, T = 30, B = 50;
        double pw = W - L - R, ph = H - T - B;
#define PX(x) (L + ((x) - x0) / (x1 - x0) * pw)
#define PY(y) (T + (1 - ((y) - y0) / (y1 - y0)) * ph)
        char tmp[4096];
        snprintf(tmp, sizeof tmp, "%s.tmp", out_path);
        FILE *f = fopen(tmp, "wb");
        if (!f) {
            st = kvf_error_set(KVF_ERR_IO, "%s: cannot create: %s", out_path, strerror(errno));
        } else {
            fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" "
                       "font-family=\"sans-serif\" font-size=\"12\">\n", W, H);
            fprintf(f, "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n");
            for (double y = y0; y <= y1 + ys / 2; y += ys)
                fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>"
                           "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%g</text>\n",
                        L, PY(y), L + pw, PY(y), L - 6, PY(y) + 4, y);
            for (double x = ceil(x0 / xs) * xs; x <= x1 + xs / 2; x += xs)
                fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#eee\"/>"
                           "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%g</text>\n",
                        PX(x), T, PX(x), T + ph, PX(x), T + ph + 16, x);
            fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" stroke=\"#333\"/>\n",
                    L, T, pw, ph);
            fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">step</text>\n", L + pw / 2, H - 12);
            fprintf(f, "<text transform=\"translate(18,%.1f) rotate(-90)\" text-anchor=\"middle\">loss (nats)</text>\n",
                    T + ph / 2);
            for (int i = 0; i < n; i++) {
                const char *c = colors[i % 10];
                struct series *s = &runs[i].train;
                if (s->n) {
                    fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1.5\" points=\"", c);
                    for (int j = 0; j < s->n; j++)
                        if (isfinite(s->y[j])) fprintf(f, "%.1f,%.1f ", PX(s->x[j]), PY(s->y[j]));
                    fprintf(f, "\"/>\n");
                }
                s = &runs[i].val;
                for (int j = 0; j < s->n; j++)
                    if (isfinite(s->y[j]))
                        fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3.5\" fill=\"%s\" stroke=\"white\"/>\n",
                                PX(s->x[j]), PY(s->y[j]), c);
                double ly = T + 10 + 20 * i;
                char extra[64] = "";
                if (s->n) snprintf(extra, sizeof extra, " (val %.3f)", s->y[s->n - 1]);
                fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" stroke-width=\"3\"/>"
                           "<text x=\"%.1f\" y=\"%.1f\">", L + pw + 15, ly, L + pw + 35, ly, c, L + pw + 40, ly + 4);
                for (const char *p = runs[i].name; *p; p++) /* escape for XML */
                    fputs(*p == '<' ? "&lt;" : *p == '>' ? "&gt;" : *p == '&' ? "&amp;" : (char[2]){*p, 0}, f);
                fprintf(f, "%s</text>\n", extra);
            }
            fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" fill=\"#555\">lines: train loss, dots: val loss</text>\n",
                    L + pw + 15, T + 20 + 20 * n + 10);
            fprintf(f, "</svg>\n");
            bool ok = !ferror(f);
            if (fclose(f) != 0 || !ok || rename(tmp, out_path) != 0) {
                remove(tmp);
                st = kvf_error_set(KVF_ERR_IO, "%s: write failed: %s", out_path, strerror(errno));
            }
        }
#undef PX
#undef PY
    }
    for (int i = 0; i < n; i++) {
        free(runs[i].train.x);
        free(runs[i].train.y);
        free(runs[i].val.x);
        free(runs[i].val.y);
    }
    free(runs);
    return st;
}

struct summary_row {
    char name[128];
    long long params, kv;
    double train, val;
};

static int cmp_row(const void *a, const void *b) {
    const struct summary_row *x = a, *y = b;
    if (x->kv != y->kv) return x->kv < y->kv ? -1 : 1;
    return strcmp(x->name, y->name);
}

kvf_status kvf_plot_summary(const char *const *paths, int n, FILE *out) {
    struct summary_row *rows = calloc((size_t)n, sizeof *rows);
    KVF_CHECK(rows, KVF_ERR_OOM, "plot: out of memory");
    kvf_status st = KVF_OK;
    for (int i = 0; i < n && st == KVF_OK; i++) {
        struct run_data r = {0};
        st = read_run(paths[i], &r);
        if (st == KVF_OK) {
            snprintf(rows[i].name, sizeof rows[i].name, "%s", r.name);
            rows[i].train = r.train.n ? r.train.y[r.train.n - 1] : NAN;
            rows[i].val = r.val.n ? r.val.y[r.val.n - 1] : NAN;
            rows[i].params = rows[i].kv = -1;
            char dir[1024];
            snprintf(dir, sizeof dir, "%s", paths[i]);
            char *slash = strrchr(dir, '/');
            if (slash) *slash = '\0';
            else snprintf(dir, sizeof dir, ".");
            char cfgdir[1100];
            snprintf(cfgdir, sizeof cfgdir, "%s/checkpoint", dir);
            kvf_model_config c;
            if (kvf_hf_config_read(cfgdir, &c, NULL, 0) == KVF_OK) {
                rows[i].params = (long long)kvf_model_n_params(&c);
                rows[i].kv = (long long)kvf_model_kv_bytes_per_token(&c);
            } else {
                kvf_error_clear(); /* no checkpoint beside it: the row has no figures */
            }
        }
        free(r.train.x);
        free(r.train.y);
        free(r.val.x);
        free(r.val.y);
    }
    if (st == KVF_OK) {
        qsort(rows, (size_t)n, sizeof *rows, cmp_row);
        fprintf(out, "| run | parameters | KV cache B/token | train loss | val loss |\n|---|---:|---:|---:|---:|\n");
        for (int i = 0; i < n; i++) {
            fprintf(out, "| %s | ", rows[i].name);
            if (rows[i].params >= 0) fprintf(out, "%lld | %lld | ", rows[i].params, rows[i].kv);
            else fprintf(out, "? | ? | ");
            fprintf(out, isfinite(rows[i].train) ? "%.4f | " : "- | ", rows[i].train);
            fprintf(out, isfinite(rows[i].val) ? "%.4f |\n" : "- |\n", rows[i].val);
        }
    }
    free(rows);
    return st;
}
