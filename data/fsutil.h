/* fsutil.h — the few file-system steps runs need: make folders, swap a finished folder
 * into place, remove a tree, copy a file. Errors name the path and the system's reason. */
#ifndef KVF_DATA_FSUTIL_H
#define KVF_DATA_FSUTIL_H

#include <stdbool.h>

#include "autograd/error.h"

bool       kvf_fs_exists(const char *path);
kvf_status kvf_fs_mkdirs(const char *path); /* mkdir -p */
void       kvf_fs_remove_tree(const char *path); /* rm -rf; silent */
/* Move the finished folder src to dst, replacing dst if it exists (dst is first renamed to
 * old, then removed), so dst is always either the previous or the new complete folder. */
kvf_status kvf_fs_replace_dir(const char *src, const char *dst, const char *old);
/* Copy file src into folder dir under name. */
kvf_status kvf_fs_copy_file(const char *src, const char *dir, const char *name);

#endif
