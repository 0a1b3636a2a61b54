#define _GNU_SOURCE
#include "fsutil.h"

#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

bool kvf_fs_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

kvf_status kvf_fs_mkdirs(const char *path) {
    char buf[4096];
    KVF_CHECK(strlen(path) < sizeof buf, KVF_ERR_ARG, "path too long: %s", path);
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1;; p++) {
        if (*p == '/' || *p == '\0') {
            char c = *p;
            *p = '\0';
            if (mkdir(buf, 0777) != 0 && errno != EEXIST)
                return kvf_error_set(KVF_ERR_IO, "%s: cannot create folder: %s", buf, strerror(errno));
            *p = c;
            if (!c) break;
        }
    }
    struct stat st;
    KVF_CHECK(stat(path, &st) == 0 && S_ISDIR(st.st_mode), KVF_ERR_IO, "%s: not a folder", path);
    return KVF_OK;
}

static int rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb;
    (void)flag;
    (void)ftw;
    remove(p);
    return 0;
}

void kvf_fs_remove_tree(const char *path) {
    if (kvf_fs_exists(path)) nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

kvf_status kvf_fs_replace_dir(const char *src, const char *dst, const char *old) {
    bool had = kvf_fs_exists(dst);
    if (had) {
        kvf_fs_remove_tree(old);
        if (rename(dst, old) != 0)
            return kvf_error_set(KVF_ERR_IO, "%s: cannot move aside: %s", dst, strerror(errno));
    }
    if (rename(src, dst) != 0) {
        int e = errno;
        if (had) rename(old, dst); /* put the previous one back */
        return kvf_error_set(KVF_ERR_IO, "%s: cannot move %s into place: %s", dst, src, strerror(e));
    }
    if (had) kvf_fs_remove_tree(old);
    return KVF_OK;
}

kvf_status kvf_fs_copy_file(const char *src, const char *dir, const char *name) {
    char dst[4096];
    snprintf(dst, sizeof dst, "%s/%s", dir, name);
    FILE *in = fopen(src, "rb");
    if (!in) return kvf_error_set(KVF_ERR_IO, "%s: cannot open: %s", src, strerror(errno));
    FILE *out = fopen(dst, "wb");
    if (!out) {
        fclose(in);
        return kvf_error_set(KVF_ERR_IO, "%s: cannot create: %s", dst, strerror(errno));
    }
    char buf[65536];
    size_t n;
    bool ok = true;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0) ok = ok && fwrite(buf, 1, n, out) == n;
    ok = ok && !ferror(in);
    fclose(in);
    if (fclose(out) != 0) ok = false;
    if (!ok) {
        remove(dst);
        return kvf_error_set(KVF_ERR_IO, "%s: copy failed: %s", dst, strerror(errno));
    }
    return KVF_OK;
}
