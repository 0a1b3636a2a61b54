/* tokenizer_load.h — pick a tokenizer from a spec string and record it in a model folder.
 * A spec is "byte" (the built-in byte tokenizer with end-of-text, vocab 257), a path to a
 * Hugging Face tokenizer.json, or a model folder holding tokenizer.json or
 * kvforge_tokenizer.json (what kvforge writes for the byte tokenizer). */
#ifndef KVF_DATA_TOKENIZER_LOAD_H
#define KVF_DATA_TOKENIZER_LOAD_H

#include "tokenizer.h"

kvf_tokenizer *kvf_tokenizer_open(const char *spec);
/* Make folder dir describe the same tokenizer: copy tokenizer.json, or write
 * kvforge_tokenizer.json for "byte". */
kvf_status kvf_tokenizer_save_spec(const char *spec, const char *dir);

#endif
