/* convert_testutil.h — what the conversion suites (test_convert, test_convert_mla) share:
 * logits of a model on fixed ids, the largest logit difference of two models, random-token
 * calibration, and the KJV text of $KVF_SHARED through a model folder's tokenizer. */
#ifndef KVF_TEST_CONVERT_TESTUTIL_H
#define KVF_TEST_CONVERT_TESTUTIL_H

#include <stddef.h>

#include "convert/calib.h"
#include "data/ids.h"
#include "model/transformer.h"

#define KVF_TEST_T_SEQ 12

/* Logits of m (CPU) on ids [B, T] as doubles, malloc'd; ids NULL: fixed random ids [2, 12]. */
double *kvf_test_logits(kvf_model *m, const int32_t *ids, int64_t B, int64_t T);
/* max |logit a − logit b| on the same ids (NaN propagates). */
double kvf_test_max_logit_diff(kvf_model *a, kvf_model *b, const int32_t *ids, int64_t B, int64_t T);
/* max |logit| on the fixed random ids: the scale a tolerance is relative to. */
double kvf_test_logit_scale(kvf_model *m);
/* Calibration statistics from 8 windows of 24 random tokens (seeded); partner != NULL: with the
 * cross-layer moments of kvf_calib_collect_cross. */
void kvf_test_calibrate(kvf_model *m, kvf_calib *cal, const int *partner, uint64_t seed);

/* $KVF_SHARED, else ../shared. */
const char *kvf_test_shared(void);
/* kjv.txt bytes [from, from + bytes) (from < 0: from the val split at 95%), malloc'd, count in
 * *got; NULL (with a note on stderr) without kjv.txt. */
char *kvf_test_kjv_read(long from, size_t bytes, size_t *got);
/* Those bytes through the tokenizer of model folder dir (empty without kjv.txt). */
kvf_ids kvf_test_kjv_tokens(const char *dir, long from, size_t bytes);

#endif
