/* squashfuse's fuseprivate.h, which its 0.1.105 release (Debian 12's libsquashfuse-dev)
 * does not install; the declarations are that release's (github.com/vasi/squashfuse, tag
 * 0.1.105, BSD-2-Clause), so they match the library runtime.c is linked with.
 * runtime.c calls the newer three-argument sqfs_usage; 0.1.105's takes two. */
#ifndef SQFS_FUSEPRIVATE_H
#define SQFS_FUSEPRIVATE_H

#include "squashfuse.h"

#if FUSE_USE_VERSION >= 30
#include <fuse3/fuse.h>
#include <fuse3/fuse_lowlevel.h>
#else
#include <fuse.h>
#endif
#include <stdbool.h>
#include <sys/statvfs.h>

int sqfs_listxattr(sqfs *fs, sqfs_inode *inode, char *buf, size_t *size);

void sqfs_usage(char *progname, bool fuse_usage);
#define sqfs_usage(progname, fuse_usage, ll_usage) (sqfs_usage)(progname, fuse_usage)

typedef struct {
	char *progname;
	const char *image;
	int mountpoint;
	size_t offset;
	unsigned int idle_timeout_secs;
} sqfs_opts;
int sqfs_opt_proc(void *data, const char *arg, int key, struct fuse_args *outargs);

int sqfs_statfs(sqfs *sq, struct statvfs *st);

#endif
