/* tokenizer_hf.h — Hugging Face `tokenizer.json` tokenizers (model type BPE) behind the
 * kvf_tokenizer interface (tokenizer.h).
 *
 *   kvf_tokenizer *tok = kvf_tokenizer_hf_load("model/tokenizer.json");
 *   if (!tok) { fprintf(stderr, "%s\n", kvf_error_message()); ... }
 *   kvf_tokenizer_encode(tok, text, len, &ids);
 *
 * What is read (everything else is an error naming the file, never ignored silently):
 *   model         BPE: vocab, merges ("a b" strings or ["a", "b"] pairs), unk_token, fuse_unk,
 *                 byte_fallback (<0xXX> tokens), ignore_merges, continuing_subword_prefix,
 *                 end_of_word_suffix; dropout must be null or 0.
 *   normalizer    null, Sequence, Prepend, Append, Replace (String or Regex pattern, literal
 *                 content), NFC, NFD, NFKC, NFKD (Unicode 14 tables made from Python's
 *                 unicodedata by tools/gen_tokenizer_unicode.py; HF's crate may be on an older
 *                 Unicode, which matters only for characters added since), Lowercase, Strip.
 *   pre_tokenizer null, Sequence, ByteLevel (add_prefix_space, use_regex = the GPT-2 regex),
 *                 Split (String or Regex pattern, all five behaviors, invert), Metaspace
 *                 (replacement, prepend_scheme always / first / never, split), Digits,
 *                 Whitespace, WhitespaceSplit, Punctuation, CharDelimiterSplit.
 *                 Regexes are PCRE2 with UTF and Unicode properties; HF uses Oniguruma, so \s,
 *                 \w, \h (and \S, \W, \H outside classes) are rewritten to Oniguruma's
 *                 meaning (\s = [\t-\r\x{85}\p{Z}], \w = [\p{L}\p{M}\p{N}\p{Pc}]). A pattern
 *                 PCRE2 rejects is an error with PCRE2's message and offset.
 *   decoder       null (tokens joined with " "), Sequence, ByteLevel, Metaspace, Replace,
 *                 ByteFallback, Fuse, Strip, BPEDecoder.
 *   added_tokens  special and not: found in the text before anything else (leftmost, then
 *                 longest match, as HF's Aho-Corasick LeftmostLongest), never split; tokens with
 *                 normalized = true are matched in the normalized text; single_word, lstrip and
 *                 rstrip are honoured. Ids are assigned as HF assigns them on load (the
 *                 model's id when the content is in the vocab, else the next free id).
 *   post_processor, truncation, padding: read but not applied (see encode below).
 *
 * encode = HF `Tokenizer.encode(text, add_special_tokens=False).ids`: no BOS/EOS or template
 * tokens are added (callers insert eos_id between documents, tokenizer.h), no truncation or
 * padding. text must be valid UTF-8 (HF takes only Unicode strings): invalid bytes are
 * KVF_ERR_ARG naming the byte offset.
 *
 * decode (the vtable's) = HF `Tokenizer.decode(ids)` with its default skip_special_tokens=True:
 * special added tokens (and vocab entries spelled like one) decode to nothing, like the byte
 * tokenizer's end-of-text id; this is also what the fixtures' expected.json holds ("<unk>"
 * decodes to ""). kvf_tokenizer_hf_decode_ex(..., false, ...) is skip_special_tokens=False,
 * the exact inverse of encode wherever the vocabulary covers the text.
 * Both run the tokenizer's decoder chain as HF does (ByteLevel turns invalid UTF-8 into U+FFFD
 * like Rust's from_utf8_lossy). Ids in [0, vocab_size) that no token has decode to nothing
 * (HF skips them); ids outside it are KVF_ERR_ARG.
 *
 * bos_id / eos_id, first rule that gives an id wins:
 *   1. kvf_tokenizer_hf_load only: tokenizer_config.json beside the file, keys "bos_token" /
 *      "eos_token" (a string or {"content": ...}) naming a token that has an id;
 *   2. post_processor TemplateProcessing: the "single" template's first item, if it is a
 *      SpecialToken, is bos; its last item, if a SpecialToken, is eos;
 *   3. a special added token named, for bos: <|begin_of_text|>, <s>, <bos>, <|startoftext|>;
 *      for eos: <|endoftext|>, <|end_of_text|>, </s>, <eos>, <|eos|>;
 *   otherwise -1.
 *
 * The tokenizer may be shared by threads. Working state (the BPE word cache, regex scratch) is
 * kept in a small mutex-guarded pool inside it and reused across calls, so short calls are
 * cheap (~2 µs for a sentence) and the cache survives between documents.
 *
 * Errors: KVF_ERR_IO (file), KVF_ERR_FORMAT (broken JSON with line and column, missing or
 * mistyped fields, merges naming unknown tokens, bad regexes with PCRE2's message and offset,
 * an unk_token missing from the vocab once it is needed), KVF_ERR_UNSUPPORTED (valid HF
 * features kvforge does not implement: other model types, Precompiled / BertNormalizer /
 * StripAccents / Nmt normalizers, UnicodeScripts / FixedLength pre-tokenizers, WordPiece / CTC
 * decoders, BPE dropout, Replace with $ group references, ids >= 2^22), KVF_ERR_OOM; every
 * message starts with the file name. Only library-side: nothing is printed. */
#ifndef KVF_DATA_TOKENIZER_HF_H
#define KVF_DATA_TOKENIZER_HF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tokenizer.h"

/* Load a tokenizer.json file. NULL (error recorded) on failure. */
kvf_tokenizer *kvf_tokenizer_hf_load(const char *path);

/* Load from memory (fuzzing, embedded files). name is used in messages and as tok->name;
 * json[0..len) need not be NUL-terminated. No tokenizer_config.json is consulted. */
kvf_tokenizer *kvf_tokenizer_hf_load_buffer(const char *name, const char *json, size_t len);

/* true when tok was made by one of the two loaders above. */
bool kvf_tokenizer_is_hf(const kvf_tokenizer *tok);

/* HF decode with an explicit skip_special_tokens. */
kvf_status kvf_tokenizer_hf_decode_ex(const kvf_tokenizer *tok, const int32_t *ids, int64_t n,
                                      bool skip_special_tokens, kvf_bytes *out);

/* Token string ↔ id (added tokens first, then the model vocab, as HF). -1 / NULL when absent.
 * The returned string is owned by tok, NUL-terminated, and *len (if len) gets its length. */
int32_t     kvf_tokenizer_hf_token_to_id(const kvf_tokenizer *tok, const char *token, size_t len);
const char *kvf_tokenizer_hf_id_to_token(const kvf_tokenizer *tok, int32_t id, size_t *len);

#endif
