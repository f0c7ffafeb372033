/*
 * lseek(2) with SEEK_DATA / SEEK_HOLE for Node, which has no lseek: finds the data extents of
 * a sparse file so that backy never reads its holes. Two functions, each one system call:
 *
 *   seekData(fd, offset) -> the first data offset >= offset, or -1 when there is none (ENXIO)
 *   seekHole(fd, offset) -> the first hole offset >= offset (the file size at the latest),
 *                           or -1 when offset is at or past the end (ENXIO)
 *
 * Any other failure throws an Error whose `code` is the errno name (EINVAL where a file system
 * does not support SEEK_DATA: callers then read everything, as before).
 * The file offset of `fd` moves; backy reads with pread (positional), so that does not matter.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>
#include <unistd.h>
#include <node_api.h>

static napi_value throw_errno(napi_env env, int err) {
  const char *code = err == EINVAL ? "EINVAL" : err == EBADF ? "EBADF" : err == ESPIPE ? "ESPIPE" : err == EOVERFLOW ? "EOVERFLOW" : "EIO";
  napi_throw_error(env, code, strerror(err));
  return NULL;
}

static napi_value do_seek(napi_env env, napi_callback_info info, int whence) {
  size_t argc = 2;
  napi_value argv[2];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 2) {
    napi_throw_type_error(env, NULL, "expected (fd, offset)");
    return NULL;
  }
  int32_t fd;
  int64_t offset;
  if (napi_get_value_int32(env, argv[0], &fd) != napi_ok || napi_get_value_int64(env, argv[1], &offset) != napi_ok ||
      offset < 0) {
    napi_throw_type_error(env, NULL, "expected (fd, offset >= 0)");
    return NULL;
  }
  off_t r = lseek(fd, (off_t)offset, whence);
  if (r < 0) {
    if (errno == ENXIO) r = -1;
    else return throw_errno(env, errno);
  }
  napi_value out;
  napi_create_int64(env, (int64_t)r, &out);
  return out;
}

static napi_value seek_data(napi_env env, napi_callback_info info) { return do_seek(env, info, SEEK_DATA); }
static napi_value seek_hole(napi_env env, napi_callback_info info) { return do_seek(env, info, SEEK_HOLE); }

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"seekData", NULL, seek_data, NULL, NULL, NULL, napi_default, NULL},
      {"seekHole", NULL, seek_hole, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, 2, props);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
