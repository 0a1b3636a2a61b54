/* convert_impl.h — what the conversion files share (not a public API): parameter access as
 * doubles on any device, deriving a model with a new config, the KV-head grouping of
 * GQA, the RoPE pair layout, weighted PCA, and the pooling used both by the in-memory
 * conversions (gqa.c, cla.c) and by the streaming path (stream.c), so the two give the same
 * bytes. Math: docs/conversions.md. */
#ifndef KVF_CONVERT_IMPL_H
#define KVF_CONVERT_IMPL_H

#include <stdio.h>

#include "convert.h"
#include "model/hf_config.h"

/* ---- parameters ---------------------------------------------------------------------------- */

/* A malloc'd row-major copy of t (f32/f64/bf16/f16, any device) as doubles, or NULL with an
 * error; and the way back, rounded to t's dtype. */
double    *kvf_cv_tensor_read(const kvf_tensor *t);
kvf_status kvf_cv_tensor_write(kvf_tensor *t, const double *v);
/* "model.layers.L.self_attn.WHAT" into buf. */
const char *kvf_cv_name(char *buf, size_t n, int layer, const char *what);
/* A malloc'd row-major copy of parameter name as doubles (numel in *numel when not NULL), or
 * NULL with an error naming the parameter. */
double *kvf_cv_read(const kvf_model *m, const char *name, int64_t *numel);
/* The same, NULL without an error when the model has no such parameter. */
double *kvf_cv_read_opt(const kvf_model *m, const char *name);
/* Overwrites parameter name (numel doubles, converted to the master dtype). */
kvf_status kvf_cv_write(kvf_model *m, const char *name, const double *v);
/* A new model with config cfg on src's device; every parameter whose name and shape src
 * shares is copied, the rest are zero. */
kvf_model *kvf_cv_derive(const kvf_model *src, const kvf_model_config *cfg);

/* ---- GQA grouping -------------------------------------------------------------------------- */

/* Query head i uses source KV head i / (nq / n_src) and target KV head i / (nq / n_dst).
 * Target group g's members are the distinct source heads its query heads use, each with the
 * number of its query heads that use it. */
struct kvf_cv_groups {
    int nq, n_src, n_dst;
    int first[KVF_MAX_HEADS + 1]; /* group g's members: first[g] .. first[g+1]-1 */
    int head[KVF_MAX_HEADS];      /* source KV head of member j */
    int count[KVF_MAX_HEADS];     /* query heads of the group using it */
};
void kvf_cv_groups_init(struct kvf_cv_groups *G, int nq, int n_src, int n_dst);
/* Member index (into head[]/count[]) that query head i uses. */
int kvf_cv_member_of(const struct kvf_cv_groups *G, int i);

enum kvf_cv_pool { KVF_CV_POOL_MEAN, KVF_CV_POOL_FIRST, KVF_CV_POOL_RANDOM };

/* Pools W (n_src·rph rows × cols, rph rows per head) into out (n_dst·rph × cols). mean:
 * count-weighted mean of the members; first: the member of the group's first query head;
 * random: N(0, std) from rng, or zero when is_bias. */
struct kvf_rng;
void kvf_cv_pool_rows(const struct kvf_cv_groups *G, enum kvf_cv_pool method, int rph,
                      int64_t cols, const double *W, double *out, bool is_bias,
                      struct kvf_rng *rng, double std);
/* The random method's generator for layer l's K (which 0) or V (1) projection. */
void kvf_cv_random_rng(struct kvf_rng *r, uint64_t seed, int layer, int which);
/* Population standard deviation of n values. */
double kvf_cv_std(const double *v, int64_t n);

/* ---- RoPE pairs ---------------------------------------------------------------------------- */

/* Number of rotated pairs per head (0 without RoPE) and pair f's two dims. Dims from 2·F on
 * are not rotated. */
int  kvf_cv_rope_pairs(const kvf_model_config *c);
void kvf_cv_rope_pair(const kvf_model_config *c, int f, int *a, int *b);

/* ---- linear algebra ------------------------------------------------------------------------ */

/* Weighted PCA to rank r of vectors y ∈ R^N with second moment C (N×N), error measured in the
 * norm of M (N×N SPD; NULL = identity): A (r×N) and B (N×r) with y ≈ B·(A·y) minimising
 * E[(y − BAy)ᵀ M (y − BAy)]. A = Φᵀ M^½, B = M^-½ Φ, Φ = top-r eigenvectors of M^½ C M^½.
 * kept (may be NULL) receives the fraction of the M-weighted energy kept. */
kvf_status kvf_cv_wpca(int N, int r, const double *C, const double *M, double *A, double *B,
                       double *kept);
/* out[r] = row r of W (rows × d_model, no bias) times layer's input second moment times its
 * transpose: the energy of each projected output on the calibration data. */
kvf_status kvf_cv_energies(const kvf_calib *c, int layer, int rows, const double *W, double *out);
/* X = R·G⁻¹ for symmetric positive (semi)definite G (n×n), R (rows×n); a ridge of
 * 1e-9·mean(diag G) keeps it solvable. */
kvf_status kvf_cv_solve_right(int rows, int n, const double *R, const double *G, double *X);

/* Validation shared by the driver and the conversion functions (messages name the option). */
kvf_status kvf_cv_check_gqa(const kvf_model_config *c, const kvf_convert_opts *o, int *kv_out,
                            bool allow_same);
/* Every --to mla check that needs only the source config (route, RoPE width, FreqFold, ranks,
 * biases): the driver calls it before loading weights or reading calibration text. */
kvf_status kvf_mla_check_opts(const kvf_model_config *c, const kvf_convert_opts *o);
/* Producer list (sorted, starting at 0) from --share / --producers, checked against c. */
kvf_status kvf_cv_cla_producers(const kvf_model_config *c, const kvf_convert_opts *o,
                                int *producers, int *n_producers);
/* The new kv_source of every layer for that producer list, checked for consistency with c's
 * own sharing. */
kvf_status kvf_cv_cla_sources(const kvf_model_config *c, const int *producers, int n_producers,
                              int *kv_source);

/* ---- cla calib tuning (cla.c) ---------------------------------------------------------------- */

/* How --to cla --method calib fits a group (docs/conversions.md):
 *   init_producer  start from the producer's own K/V (else the least-squares fit to every
 *                  layer of the group, each from its own input);
 *   iters          alternating refits of the producer's K/V given the per-layer corrections;
 *   weighted       rows weighted by query energy (keys) and o_proj column norms (values).
 * Every layer's queries / o_proj then absorb its per-head correction. */
struct kvf_cv_cla_tuning {
    bool init_producer;
    int iters;
    bool weighted;
};
void kvf_cv_cla_tuning_defaults(struct kvf_cv_cla_tuning *t); /* producer, 0, weighted */
kvf_model *kvf_cv_cla_tuned(const kvf_model *src, const kvf_convert_opts *o, const kvf_calib *calib,
                            const struct kvf_cv_cla_tuning *t, FILE *log);

/* ---- streaming (stream.c) ------------------------------------------------------------------ */

/* One parameter of a standard-attention model (the names and shapes kvf_model_init
 * registers). */
struct kvf_cv_param {
    char name[112];
    int ndim;
    int64_t shape[2];
};
/* The parameter list of c (standard attention only), in kvf_model_init's order; returns the
 * count, or -1 (error set) when it does not fit in cap or c is not standard attention. */
int kvf_cv_param_list(const kvf_model_config *c, struct kvf_cv_param *out, int cap);

/* Whether the streaming path can do this conversion of a source with config c read as arch:
 * gqa/mqa mean|first|random or cla producer|mean, standard attention, HF names. */
bool kvf_cv_can_stream(const kvf_model_config *c, kvf_hf_arch arch, const kvf_convert_opts *o);

/* Converts src_dir into the existing folder out_dir tensor by tensor (config.json and the
 * weights, sharded at 5 GB), never holding more than a few tensors: nc is the target config
 * (c with fewer KV heads or a new kv_source). dtype: the output weights' dtype, or
 * KVF_DTYPE_COUNT for the source's. */
kvf_status kvf_cv_stream(const char *src_dir, const kvf_model_config *c, const kvf_model_config *nc,
                         const kvf_convert_opts *o, kvf_dtype dtype, const char *out_dir, FILE *log);

#endif
