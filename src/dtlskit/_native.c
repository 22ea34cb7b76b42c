/* dtlskit._native: the optional C implementation of dtlskit._frontend.accel's primitives.
 *
 * Theory of operation
 * -------------------
 * The contract is written in dtlskit/_accel.py; this file implements it and decides nothing.
 *
 * OpenSSL. We never link an OpenSSL: cryptography carries its own, statically, with its symbols
 * hidden, and pyOpenSSL's SSL objects live in it. init(ffi, lib) asks cryptography's cffi
 * binding for the addresses of the few functions we call (ffi.addressof(lib, name)) and keeps
 * them as opaque-pointer function types declared below, so this file needs no OpenSSL header.
 * A handle holds the SSL and memory BIO pointers of one pyOpenSSL Connection and a strong
 * reference to the cdata objects that own them, so they outlive every call made through it.
 *
 * Threads. Every function runs with the GIL held: each call is a few microseconds of work on a
 * non-blocking socket or a memory BIO, shorter than what releasing and retaking the GIL costs
 * under contention. The one exception is recv_batch's wait (a timeout other than 0, nothing
 * waiting on the socket): its poll runs with the GIL released. OpenSSL's error queue is per thread, so the error queue is cleared before
 * each SSL call and the caller reads it (raise_error) on the same thread. Scratch buffers are
 * per thread, so a callback that lets another thread run in the middle of an SSL call cannot
 * clobber them. A handle must not be used by two threads at once (the caller's engine lock).
 *
 * Untrusted bytes. open_record copies a datagram into the read BIO and lets OpenSSL parse it;
 * this file never looks inside a record. recv_batch reads every datagram into a 65,536-byte
 * slot; a datagram larger than that (MSG_TRUNC, possible only off UDP) is dropped, never
 * delivered in part, and the batch reports OSError(EMSGSIZE) beside what it read.
 *
 * Anything this file cannot do exactly as the pure-Python implementation would (a socket with
 * a timeout, an address that is not a numeric IPv4/IPv6 tuple, a non-bytes datagram, a family
 * other than AF_INET/AF_INET6/AF_UNIX) is handed to that implementation, so behaviour matches.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

/* ---- OpenSSL through function pointers ------------------------------------------------- */

typedef int (*ssl_io_fn)(void *ssl, void *buf, int num);
typedef int (*ssl_get_error_fn)(void *ssl, int ret);
typedef int (*bio_io_fn)(void *bio, void *buf, int len);
typedef long (*bio_get_mem_data_fn)(void *bio, char **pp);
typedef void (*err_clear_error_fn)(void);

static ssl_io_fn p_SSL_read;
static ssl_io_fn p_SSL_write;
static ssl_get_error_fn p_SSL_get_error;
static bio_io_fn p_BIO_write;
static bio_io_fn p_BIO_read;
static bio_get_mem_data_fn p_BIO_get_mem_data;
static err_clear_error_fn p_ERR_clear_error;

static int initialized;
static PyObject *g_ffi;          /* cryptography's FFI object */
static PyObject *g_ssl_ctype;    /* ffi.typeof("SSL *") */
static PyObject *g_bio_ctype;    /* ffi.typeof("BIO *") */
static long g_want_read = 2;     /* SSL_ERROR_WANT_READ, read from lib at init */
static long g_syscall = 5;       /* SSL_ERROR_SYSCALL */

#define PLAINTEXT_MAX (16384 + 2048)
#define DATAGRAM_MAX 65536
#define VLEN 32
#define EINTR_RETRIES 1000

static const char TRUNCATED_MESSAGE[] =
    "a datagram larger than 65536 bytes was truncated by the socket and dropped";

/* ---- per-thread scratch ---------------------------------------------------------------- */

typedef struct {
    char plaintext[PLAINTEXT_MAX];
    char *slots;                              /* VLEN * DATAGRAM_MAX, touched lazily */
    struct mmsghdr msgs[VLEN];
    struct iovec iovs[VLEN];
    struct sockaddr_storage names[VLEN];
} Scratch;

static pthread_key_t scratch_key;

static void free_scratch(void *p) {
    Scratch *s = (Scratch *)p;
    if (s != NULL) {
        free(s->slots);
        free(s);
    }
}

static Scratch *get_scratch(int need_slots) {
    Scratch *s = (Scratch *)pthread_getspecific(scratch_key);
    if (s == NULL) {
        s = (Scratch *)calloc(1, sizeof(Scratch));
        if (s == NULL) {
            PyErr_NoMemory();
            return NULL;
        }
        if (pthread_setspecific(scratch_key, s) != 0) {
            free(s);
            PyErr_NoMemory();
            return NULL;
        }
    }
    if (need_slots && s->slots == NULL) {
        /* Large enough that malloc maps it: pages become resident only when a datagram
           touches them, so small datagrams cost one page per slot. */
        s->slots = (char *)malloc((size_t)VLEN * DATAGRAM_MAX);
        if (s->slots == NULL) {
            PyErr_NoMemory();
            return NULL;
        }
    }
    return s;
}

/* ---- helpers --------------------------------------------------------------------------- */

static PyObject *fallback_module; /* dtlskit._frontend.accel, imported on first use */

static PyObject *call_fallback_args(const char *name, PyObject *const *args, Py_ssize_t nargs) {
    if (fallback_module == NULL) {
        fallback_module = PyImport_ImportModule("dtlskit._frontend.accel");
        if (fallback_module == NULL) {
            return NULL;
        }
    }
    PyObject *fn = PyObject_GetAttrString(fallback_module, name);
    if (fn == NULL) {
        return NULL;
    }
    PyObject *result = PyObject_Vectorcall(fn, args, (size_t)nargs, NULL);
    Py_DECREF(fn);
    return result;
}

static PyObject *call_fallback(const char *name, PyObject *a, PyObject *b) {
    if (fallback_module == NULL) {
        fallback_module = PyImport_ImportModule("dtlskit._frontend.accel");
        if (fallback_module == NULL) {
            return NULL;
        }
    }
    PyObject *fn = PyObject_GetAttrString(fallback_module, name);
    if (fn == NULL) {
        return NULL;
    }
    PyObject *result = PyObject_CallFunctionObjArgs(fn, a, b, NULL);
    Py_DECREF(fn);
    return result;
}

static PyObject *os_error(int err, const char *message) {
    /* OSError(errno, text) picks the subclass (BlockingIOError, ConnectionRefusedError, ...)
       exactly as the socket module's own errors do. */
    return PyObject_CallFunction(PyExc_OSError, "is", err, message ? message : strerror(err));
}

static void *pointer_of(PyObject *cdata, PyObject *expected_ctype, const char *what) {
    PyObject *ctype = PyObject_CallMethod(g_ffi, "typeof", "O", cdata);
    if (ctype == NULL) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "make_handle: the connection's %s is not a cdata pointer", what);
        return NULL;
    }
    int same = PyObject_RichCompareBool(ctype, expected_ctype, Py_EQ);
    Py_DECREF(ctype);
    if (same <= 0) {
        if (same == 0) {
            PyErr_Format(PyExc_TypeError, "make_handle: the connection's %s has the wrong type", what);
        }
        return NULL;
    }
    PyObject *address = PyObject_CallMethod(g_ffi, "cast", "sO", "uintptr_t", cdata);
    if (address == NULL) {
        return NULL;
    }
    PyObject *number = PyNumber_Long(address);
    Py_DECREF(address);
    if (number == NULL) {
        return NULL;
    }
    void *p = PyLong_AsVoidPtr(number);
    Py_DECREF(number);
    if (p == NULL && !PyErr_Occurred()) {
        PyErr_Format(PyExc_ValueError, "make_handle: the connection's %s is NULL", what);
    }
    return p;
}

/* Is the socket in non-blocking mode (timeout 0)? 1 yes, 0 no, -1 error. A socket.socket
   says 0.0; the wrappers asyncio and uvloop hand out (TransportSocket, PseudoSocket) say 0. */
static int socket_is_nonblocking(PyObject *sock) {
    PyObject *timeout = PyObject_CallMethod(sock, "gettimeout", NULL);
    if (timeout == NULL) {
        return -1;
    }
    int result = 0;
    if (PyFloat_Check(timeout)) {
        result = PyFloat_AS_DOUBLE(timeout) == 0.0;
    } else if (PyLong_Check(timeout)) {
        int overflow = 0;
        result = PyLong_AsLongAndOverflow(timeout, &overflow) == 0 && overflow == 0;
        PyErr_Clear();
    }
    Py_DECREF(timeout);
    return result;
}

static int socket_int(PyObject *sock, const char *method_or_attr, int call) {
    PyObject *value = call ? PyObject_CallMethod(sock, method_or_attr, NULL)
                           : PyObject_GetAttrString(sock, method_or_attr);
    if (value == NULL) {
        return -1;
    }
    long n = PyLong_AsLong(value);
    Py_DECREF(value);
    if (n == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (n < 0 || n > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "socket returned an invalid number");
        return -1;
    }
    return (int)n;
}

/* The socket's address family: from the kernel (SO_DOMAIN) through its descriptor, else its
   "family" attribute (socket.socket.family builds an enum member in Python on every read:
   twice per read batch, it cost about a microsecond per echoed message). */
static int socket_family(PyObject *sock, int fd) {
#ifdef SO_DOMAIN
    int domain = 0;
    socklen_t size = sizeof domain;
    if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &size) == 0 && size == sizeof domain) {
        return domain;
    }
#endif
    return socket_int(sock, "family", 0);
}

/* ---- the handle ------------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    void *ssl;
    void *rbio;
    void *wbio;
    PyObject *connection;
    PyObject *owners; /* (connection._ssl, ._into_ssl, ._from_ssl): they own the pointers */
} Handle;

static int handle_traverse(Handle *self, visitproc visit, void *arg) {
    Py_VISIT(self->connection);
    Py_VISIT(self->owners);
    return 0;
}

static int handle_clear(Handle *self) {
    self->ssl = self->rbio = self->wbio = NULL; /* never used after its owners may be gone */
    Py_CLEAR(self->connection);
    Py_CLEAR(self->owners);
    return 0;
}

static void handle_dealloc(Handle *self) {
    PyObject_GC_UnTrack(self);
    handle_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMemberDef handle_members[] = {
    {"connection", T_OBJECT, offsetof(Handle, connection), READONLY,
     "the OpenSSL.SSL.Connection this handle works on"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject HandleType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "dtlskit._native.Handle",
    .tp_doc = "One established session's SSL and memory BIO pointers (see dtlskit._frontend.accel).",
    .tp_basicsize = sizeof(Handle),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_traverse = (traverseproc)handle_traverse,
    .tp_clear = (inquiry)handle_clear,
    .tp_dealloc = (destructor)handle_dealloc,
    .tp_members = handle_members,
};

static int require_init(void) {
    if (!initialized) {
        PyErr_SetString(PyExc_RuntimeError, "dtlskit._native.init(ffi, lib) was not called");
        return -1;
    }
    return 0;
}

static Handle *as_live_handle(PyObject *obj) {
    if (!PyObject_TypeCheck(obj, &HandleType)) {
        PyErr_SetString(PyExc_TypeError, "expected a handle from make_handle()");
        return NULL;
    }
    Handle *h = (Handle *)obj;
    if (h->ssl == NULL || h->rbio == NULL || h->wbio == NULL) {
        PyErr_SetString(PyExc_ValueError, "this handle was cleared");
        return NULL;
    }
    return h;
}

static PyObject *make_handle(PyObject *module, PyObject *connection) {
    if (require_init() < 0) {
        return NULL;
    }
    PyObject *ssl = PyObject_GetAttrString(connection, "_ssl");
    PyObject *rbio = ssl ? PyObject_GetAttrString(connection, "_into_ssl") : NULL;
    PyObject *wbio = rbio ? PyObject_GetAttrString(connection, "_from_ssl") : NULL;
    Handle *h = NULL;
    if (wbio == NULL) {
        goto done;
    }
    if (rbio == Py_None || wbio == Py_None) {
        PyErr_SetString(PyExc_ValueError,
                        "make_handle: the connection is not on memory BIOs (it was given a socket)");
        goto done;
    }
    void *p_ssl = pointer_of(ssl, g_ssl_ctype, "SSL");
    void *p_rbio = p_ssl ? pointer_of(rbio, g_bio_ctype, "read BIO") : NULL;
    void *p_wbio = p_rbio ? pointer_of(wbio, g_bio_ctype, "write BIO") : NULL;
    if (p_wbio == NULL) {
        goto done;
    }
    h = PyObject_GC_New(Handle, &HandleType);
    if (h == NULL) {
        goto done;
    }
    h->ssl = p_ssl;
    h->rbio = p_rbio;
    h->wbio = p_wbio;
    Py_INCREF(connection);
    h->connection = connection;
    h->owners = PyTuple_Pack(3, ssl, rbio, wbio);
    if (h->owners == NULL) {
        Py_DECREF(h);
        h = NULL;
        goto done;
    }
    PyObject_GC_Track(h);
done:
    Py_XDECREF(ssl);
    Py_XDECREF(rbio);
    Py_XDECREF(wbio);
    return (PyObject *)h;
}

/* ---- records --------------------------------------------------------------------------- */

static int get_bytes(PyObject *obj, Py_buffer *view, const char **data, Py_ssize_t *len) {
    /* 0: bytes, no release needed; 1: buffer to release; -1: error */
    if (PyBytes_CheckExact(obj)) {
        *data = PyBytes_AS_STRING(obj);
        *len = PyBytes_GET_SIZE(obj);
        return 0;
    }
    if (PyObject_GetBuffer(obj, view, PyBUF_SIMPLE) < 0) {
        return -1;
    }
    *data = (const char *)view->buf;
    *len = view->len;
    return 1;
}

static PyObject *open_record(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "open_record(handle, datagram)");
        return NULL;
    }
    if (require_init() < 0) {
        return NULL;
    }
    Handle *h = as_live_handle(args[0]);
    if (h == NULL) {
        return NULL;
    }
    Py_buffer view;
    const char *data;
    Py_ssize_t len;
    int release = get_bytes(args[1], &view, &data, &len);
    if (release < 0) {
        return NULL;
    }
    PyObject *result = NULL;
    long code;
    if (len == 0) {
        code = g_want_read; /* an empty datagram holds no record: nothing happened */
    } else if (len > INT_MAX) {
        code = g_syscall;
    } else {
        Scratch *s = get_scratch(0);
        if (s == NULL) {
            goto out;
        }
        p_ERR_clear_error();
        if (p_BIO_write(h->rbio, (void *)data, (int)len) <= 0) {
            code = g_syscall;
        } else {
            int n = p_SSL_read(h->ssl, s->plaintext, PLAINTEXT_MAX);
            if (n > 0) {
                result = PyBytes_FromStringAndSize(s->plaintext, n);
                goto out;
            }
            code = p_SSL_get_error(h->ssl, n);
        }
    }
    result = PyLong_FromLong(code);
out:
    if (release) {
        PyBuffer_Release(&view);
    }
    return result;
}

static PyObject *seal_record(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "seal_record(handle, message)");
        return NULL;
    }
    if (require_init() < 0) {
        return NULL;
    }
    Handle *h = as_live_handle(args[0]);
    if (h == NULL) {
        return NULL;
    }
    Py_buffer view;
    const char *data;
    Py_ssize_t len;
    int release = get_bytes(args[1], &view, &data, &len);
    if (release < 0) {
        return NULL;
    }
    PyObject *result = NULL;
    if (len > INT_MAX) {
        PyErr_SetString(PyExc_OverflowError, "seal_record: message too large");
        goto out;
    }
    p_ERR_clear_error();
    int written = p_SSL_write(h->ssl, (void *)data, (int)len);
    if (written <= 0) {
        result = PyLong_FromLong(p_SSL_get_error(h->ssl, written));
        goto out;
    }
    long pending = p_BIO_get_mem_data(h->wbio, NULL);
    if (pending <= 0) {
        result = PyBytes_FromStringAndSize(NULL, 0);
        goto out;
    }
    if (pending > INT_MAX) {
        pending = INT_MAX;
    }
    result = PyBytes_FromStringAndSize(NULL, pending);
    if (result == NULL) {
        goto out;
    }
    int got = p_BIO_read(h->wbio, PyBytes_AS_STRING(result), (int)pending);
    if (got < pending) {
        _PyBytes_Resize(&result, got > 0 ? got : 0);
    }
out:
    if (release) {
        PyBuffer_Release(&view);
    }
    return result;
}

/* ---- TLS streams ----------------------------------------------------------------------- */

/* Everything OpenSSL wrote to the outgoing memory BIO, as bytes (empty when nothing). */
static PyObject *drain_output(Handle *h) {
    long pending = p_BIO_get_mem_data(h->wbio, NULL);
    if (pending <= 0) {
        return PyBytes_FromStringAndSize(NULL, 0);
    }
    if (pending > INT_MAX) {
        pending = INT_MAX;
    }
    PyObject *result = PyBytes_FromStringAndSize(NULL, pending);
    if (result == NULL) {
        return NULL;
    }
    int got = p_BIO_read(h->wbio, PyBytes_AS_STRING(result), (int)pending);
    if (got < pending) {
        _PyBytes_Resize(&result, got > 0 ? got : 0);
    }
    return result;
}

static PyObject *stream_open(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "stream_open(handle, data)");
        return NULL;
    }
    if (require_init() < 0) {
        return NULL;
    }
    Handle *h = as_live_handle(args[0]);
    if (h == NULL) {
        return NULL;
    }
    Py_buffer view;
    const char *data;
    Py_ssize_t len;
    int release = get_bytes(args[1], &view, &data, &len);
    if (release < 0) {
        return NULL;
    }
    PyObject *plaintext = NULL, *output = NULL, *result = NULL;
    Py_ssize_t used = 0;
    long code = g_want_read;
    Scratch *s = get_scratch(0);
    if (s == NULL) {
        goto out;
    }
    p_ERR_clear_error();
    if (len > INT_MAX || (len > 0 && p_BIO_write(h->rbio, (void *)data, (int)len) != (int)len)) {
        code = g_syscall; /* a memory BIO takes any write it can allocate */
    } else {
        /* Bounded: every round either decrypts a record of the bytes given (finitely many)
           or ends the loop. */
        for (;;) {
            int n = p_SSL_read(h->ssl, s->plaintext, PLAINTEXT_MAX);
            if (n <= 0) {
                code = p_SSL_get_error(h->ssl, n);
                break;
            }
            if (plaintext == NULL) {
                plaintext = PyBytes_FromStringAndSize(s->plaintext, n);
                if (plaintext == NULL) {
                    goto out;
                }
            } else if (_PyBytes_Resize(&plaintext, used + n) < 0) {
                goto out; /* plaintext was freed and set to NULL */
            } else {
                memcpy(PyBytes_AS_STRING(plaintext) + used, s->plaintext, (size_t)n);
            }
            used += n;
        }
    }
    output = drain_output(h);
    if (output == NULL) {
        goto out;
    }
    if (plaintext == NULL) {
        plaintext = PyBytes_FromStringAndSize(NULL, 0);
        if (plaintext == NULL) {
            goto out;
        }
    }
    result = Py_BuildValue("(OlO)", plaintext, code, output);
out:
    Py_XDECREF(plaintext);
    Py_XDECREF(output);
    if (release) {
        PyBuffer_Release(&view);
    }
    return result;
}

static PyObject *stream_seal(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "stream_seal(handle, data)");
        return NULL;
    }
    if (require_init() < 0) {
        return NULL;
    }
    Handle *h = as_live_handle(args[0]);
    if (h == NULL) {
        return NULL;
    }
    Py_buffer view;
    const char *data;
    Py_ssize_t len;
    int release = get_bytes(args[1], &view, &data, &len);
    if (release < 0) {
        return NULL;
    }
    PyObject *result = NULL;
    p_ERR_clear_error();
    /* Bounded: every successful SSL_write consumes at least one byte (partial writes may
       stop at each record, e.g. a peer's max_fragment_length). */
    Py_ssize_t done = 0;
    while (done < len) {
        Py_ssize_t chunk = len - done;
        int written = p_SSL_write(h->ssl, (void *)(data + done), chunk > INT_MAX ? INT_MAX : (int)chunk);
        if (written <= 0) {
            result = PyLong_FromLong(p_SSL_get_error(h->ssl, written));
            goto out;
        }
        done += written;
    }
    result = drain_output(h);
out:
    if (release) {
        PyBuffer_Release(&view);
    }
    return result;
}

/* ---- addresses ------------------------------------------------------------------------- */

/* The address object Python's socket module would return for this sockaddr (makesockaddr). */
static PyObject *make_address(const struct sockaddr_storage *ss, socklen_t len) {
    if (len == 0) {
        Py_RETURN_NONE;
    }
    char host[INET6_ADDRSTRLEN];
    switch (ss->ss_family) {
    case AF_INET: {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        if (inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host)) == NULL) {
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        return Py_BuildValue("(si)", host, (int)ntohs(a->sin_port));
    }
    case AF_INET6: {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        if (inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host)) == NULL) {
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        return Py_BuildValue("(siII)", host, (int)ntohs(a->sin6_port),
                             (unsigned int)ntohl(a->sin6_flowinfo), (unsigned int)a->sin6_scope_id);
    }
    case AF_UNIX: {
        const struct sockaddr_un *a = (const struct sockaddr_un *)ss;
        size_t offset = offsetof(struct sockaddr_un, sun_path);
        size_t path_len = (size_t)len > offset ? (size_t)len - offset : 0;
        if (path_len > sizeof(a->sun_path)) {
            path_len = sizeof(a->sun_path);
        }
        if (path_len > 0 && a->sun_path[0] == 0) { /* Linux abstract namespace */
            return PyBytes_FromStringAndSize(a->sun_path, (Py_ssize_t)path_len);
        }
        return PyUnicode_DecodeFSDefaultAndSize(a->sun_path,
                                                (Py_ssize_t)strnlen(a->sun_path, path_len));
    }
    default:
        PyErr_SetString(PyExc_OSError, "recv_batch: unexpected address family");
        return NULL;
    }
}

/* Fill *ss from a numeric address tuple as sendto() would. 1: done; 0: not a plain numeric
   tuple for this family (leave it to socket.sendto); -1: error. */
static int parse_address(int family, PyObject *address, struct sockaddr_storage *ss,
                         socklen_t *len) {
    if (!PyTuple_CheckExact(address)) {
        return 0;
    }
    Py_ssize_t size = PyTuple_GET_SIZE(address);
    if (size < 2 || !PyUnicode_CheckExact(PyTuple_GET_ITEM(address, 0)) ||
        !PyLong_CheckExact(PyTuple_GET_ITEM(address, 1))) {
        return 0;
    }
    Py_ssize_t host_len;
    const char *host = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(address, 0), &host_len);
    if (host == NULL) {
        PyErr_Clear();
        return 0;
    }
    if ((size_t)host_len != strlen(host)) {
        return 0; /* an embedded NUL: let the socket module say what is wrong */
    }
    long port = PyLong_AsLong(PyTuple_GET_ITEM(address, 1));
    if (port == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    if (port < 0 || port > 65535) {
        return 0;
    }
    memset(ss, 0, sizeof(*ss));
    if (family == AF_INET) {
        struct sockaddr_in *a = (struct sockaddr_in *)ss;
        if (size != 2 || inet_pton(AF_INET, host, &a->sin_addr) != 1) {
            return 0;
        }
        a->sin_family = AF_INET;
        a->sin_port = htons((uint16_t)port);
        *len = sizeof(*a);
        return 1;
    }
    if (family == AF_INET6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
        unsigned long flowinfo = 0, scope_id = 0;
        if (size > 4 || inet_pton(AF_INET6, host, &a->sin6_addr) != 1) {
            return 0;
        }
        if (size >= 3) {
            PyObject *f = PyTuple_GET_ITEM(address, 2);
            if (!PyLong_CheckExact(f)) {
                return 0;
            }
            flowinfo = PyLong_AsUnsignedLong(f);
            if (PyErr_Occurred() || flowinfo > 0xfffff) {
                PyErr_Clear();
                return 0;
            }
        }
        if (size == 4) {
            PyObject *sc = PyTuple_GET_ITEM(address, 3);
            if (!PyLong_CheckExact(sc)) {
                return 0;
            }
            scope_id = PyLong_AsUnsignedLong(sc);
            if (PyErr_Occurred() || scope_id > 0xffffffffUL) {
                PyErr_Clear();
                return 0;
            }
        }
        a->sin6_family = AF_INET6;
        a->sin6_port = htons((uint16_t)port);
        a->sin6_flowinfo = htonl((uint32_t)flowinfo);
        a->sin6_scope_id = (uint32_t)scope_id;
        *len = sizeof(*a);
        return 1;
    }
    return 0;
}

/* ---- batches --------------------------------------------------------------------------- */

/* Read and discard what waits on the wake-up descriptor (non-blocking; bounded). */
static void discard_wake(int wake) {
    char sink[4096];
    for (int i = 0; i < 64; i++) {
        ssize_t n = read(wake, sink, sizeof sink);
        if (n < (ssize_t)sizeof sink) {
            return;
        }
    }
}

/* recv_batch's timeout in poll's milliseconds: 0 no wait, -1 no limit, else rounded up. */
static int wait_milliseconds(PyObject *timeout, int *ms) {
    if (timeout == Py_None) {
        *ms = -1;
        return 0;
    }
    double t = PyFloat_AsDouble(timeout);
    if (t == -1.0 && PyErr_Occurred()) {
        return -1;
    }
    if (isnan(t)) {
        PyErr_SetString(PyExc_ValueError, "recv_batch: timeout is NaN");
        return -1;
    }
    if (t <= 0.0) {
        *ms = 0;
    } else if (t >= (double)INT_MAX / 1000.0) {
        *ms = INT_MAX;
    } else {
        *ms = (int)ceil(t * 1000.0);
    }
    return 0;
}

static PyObject *recv_batch(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 2 || nargs > 4) {
        PyErr_SetString(PyExc_TypeError, "recv_batch(sock, max_count, timeout=0.0, wake=-1)");
        return NULL;
    }
    PyObject *sock = args[0];
    Py_ssize_t max_count = PyNumber_AsSsize_t(args[1], PyExc_OverflowError);
    if (max_count == -1 && PyErr_Occurred()) {
        return NULL;
    }
    int wait_ms = 0;
    if (nargs >= 3 && wait_milliseconds(args[2], &wait_ms) < 0) {
        return NULL;
    }
    int wake = -1;
    if (nargs >= 4) {
        long w = PyLong_AsLong(args[3]);
        if (w == -1 && PyErr_Occurred()) {
            return NULL;
        }
        wake = w < 0 || w > INT_MAX ? -1 : (int)w;
    }
    int nonblocking = socket_is_nonblocking(sock);
    if (nonblocking < 0) {
        return NULL;
    }
    int fd = nonblocking ? socket_int(sock, "fileno", 1) : 0;
    if (fd < 0) {
        return NULL;
    }
    int family = nonblocking ? socket_family(sock, fd) : 0;
    if (family < 0) {
        return NULL;
    }
    if (!nonblocking || (family != AF_INET && family != AF_INET6 && family != AF_UNIX)) {
        return call_fallback_args("_py_recv_batch", args, nargs);
    }
    PyObject *received = PyList_New(0);
    if (received == NULL) {
        return NULL;
    }
    PyObject *error = NULL;
    Scratch *s = max_count > 0 ? get_scratch(1) : NULL;
    if (max_count > 0 && s == NULL) {
        goto fail;
    }
    Py_ssize_t remaining = max_count;
    int interrupted = 0, truncated = 0, waited = wait_ms == 0;
    while (remaining > 0 && error == NULL) {
        unsigned int want = remaining < VLEN ? (unsigned int)remaining : VLEN;
        for (unsigned int i = 0; i < want; i++) {
            s->iovs[i].iov_base = s->slots + (size_t)i * DATAGRAM_MAX;
            s->iovs[i].iov_len = DATAGRAM_MAX;
            memset(&s->msgs[i].msg_hdr, 0, sizeof(s->msgs[i].msg_hdr));
            s->msgs[i].msg_hdr.msg_name = &s->names[i];
            s->msgs[i].msg_hdr.msg_namelen = sizeof(s->names[i]);
            s->msgs[i].msg_hdr.msg_iov = &s->iovs[i];
            s->msgs[i].msg_hdr.msg_iovlen = 1;
            s->msgs[i].msg_len = 0;
        }
        int n = recvmmsg(fd, s->msgs, want, MSG_DONTWAIT, NULL);
        if (n < 0) {
            int err = errno;
            if (err == EAGAIN || err == EWOULDBLOCK) {
                if (waited || remaining < max_count) {
                    break;
                }
                /* nothing waiting: wait for a datagram, the timeout or a wake-up, once */
                waited = 1;
                struct pollfd fds[2] = {{fd, POLLIN, 0}, {wake, POLLIN, 0}};
                int polled;
                Py_BEGIN_ALLOW_THREADS
                polled = poll(fds, wake >= 0 ? 2 : 1, wait_ms);
                Py_END_ALLOW_THREADS
                if (polled < 0) {
                    if (errno == EINTR && PyErr_CheckSignals() < 0) {
                        goto fail;
                    }
                    continue; /* interrupted: one more read, as after a wake-up */
                }
                if (wake >= 0 && (fds[1].revents & POLLIN)) {
                    discard_wake(wake);
                }
                if (fds[0].revents == 0) {
                    break; /* timed out or woken */
                }
                continue;
            }
            if (err == EINTR && interrupted++ < EINTR_RETRIES) {
                if (PyErr_CheckSignals() < 0) {
                    goto fail;
                }
                continue;
            }
            error = os_error(err, NULL);
            if (error == NULL) {
                goto fail;
            }
            break;
        }
        PyObject *last_address = NULL; /* peers repeat: share one address tuple */
        int last_index = -1;            /* the slot last_address was made from */
        for (int i = 0; i < n; i++) {
            struct msghdr *hdr = &s->msgs[i].msg_hdr;
            if (hdr->msg_flags & MSG_TRUNC) {
                truncated = 1; /* dropped, never delivered in part; reported at the end */
                continue;
            }
            PyObject *address;
            if (last_address != NULL &&
                hdr->msg_namelen == s->msgs[last_index].msg_hdr.msg_namelen &&
                memcmp(&s->names[i], &s->names[last_index], hdr->msg_namelen) == 0) {
                Py_INCREF(last_address);
                address = last_address;
            } else {
                address = make_address(&s->names[i], hdr->msg_namelen);
                if (address == NULL) {
                    goto fail;
                }
            }
            last_address = address;
            last_index = i;
            PyObject *data =
                PyBytes_FromStringAndSize(s->slots + (size_t)i * DATAGRAM_MAX, s->msgs[i].msg_len);
            PyObject *pair = data ? PyTuple_New(2) : NULL;
            if (pair == NULL) {
                Py_XDECREF(data);
                Py_DECREF(address);
                goto fail;
            }
            PyTuple_SET_ITEM(pair, 0, data);
            PyTuple_SET_ITEM(pair, 1, address);
            int appended = PyList_Append(received, pair);
            Py_DECREF(pair);
            if (appended < 0) {
                goto fail;
            }
        }
        remaining -= n;
        if ((unsigned int)n < want) {
            break; /* the socket is drained */
        }
    }
    if (error == NULL && truncated) {
        error = os_error(EMSGSIZE, TRUNCATED_MESSAGE);
        if (error == NULL) {
            goto fail;
        }
    }
    if (error == NULL) {
        Py_INCREF(Py_None);
        error = Py_None;
    }
    PyObject *result = PyTuple_New(2);
    if (result == NULL) {
        goto fail;
    }
    PyTuple_SET_ITEM(result, 0, received);
    PyTuple_SET_ITEM(result, 1, error);
    return result;
fail:
    Py_DECREF(received);
    Py_XDECREF(error);
    return NULL;
}

static PyObject *send_result(Py_ssize_t sent, PyObject *error) {
    /* steals error (NULL means None) */
    if (error == NULL) {
        Py_INCREF(Py_None);
        error = Py_None;
    }
    PyObject *result = Py_BuildValue("(nO)", sent, error);
    Py_DECREF(error);
    return result;
}

static PyObject *send_batch(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "send_batch(sock, items)");
        return NULL;
    }
    PyObject *sock = args[0];
    int nonblocking = socket_is_nonblocking(sock);
    if (nonblocking < 0) {
        return NULL;
    }
    int fd = nonblocking ? socket_int(sock, "fileno", 1) : 0;
    if (fd < 0) {
        return NULL;
    }
    int family = nonblocking ? socket_family(sock, fd) : 0;
    if (family < 0) {
        return NULL;
    }
    if (!nonblocking || (family != AF_INET && family != AF_INET6)) {
        return call_fallback("_py_send_batch", sock, args[1]);
    }
    PyObject *seq = PySequence_Fast(args[1], "send_batch: items must be a sequence");
    if (seq == NULL) {
        return NULL;
    }
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    Scratch *s = get_scratch(0);
    if (s == NULL) {
        Py_DECREF(seq);
        return NULL;
    }
    Py_ssize_t sent = 0;
    int interrupted = 0;
    PyObject *result = NULL;
    while (sent < count) {
        unsigned int k = 0;
        while (sent + k < count && k < VLEN) {
            PyObject *item = items[sent + k];
            if (!PyTuple_CheckExact(item) || PyTuple_GET_SIZE(item) != 2 ||
                !PyBytes_CheckExact(PyTuple_GET_ITEM(item, 0))) {
                break;
            }
            PyObject *data = PyTuple_GET_ITEM(item, 0);
            PyObject *address = PyTuple_GET_ITEM(item, 1);
            struct msghdr *hdr = &s->msgs[k].msg_hdr;
            memset(hdr, 0, sizeof(*hdr));
            if (address != Py_None) {
                socklen_t len = 0;
                int parsed = parse_address(family, address, &s->names[k], &len);
                if (parsed < 0) {
                    goto done;
                }
                if (parsed == 0) {
                    break;
                }
                hdr->msg_name = &s->names[k];
                hdr->msg_namelen = len;
            }
            s->iovs[k].iov_base = PyBytes_AS_STRING(data);
            s->iovs[k].iov_len = (size_t)PyBytes_GET_SIZE(data);
            hdr->msg_iov = &s->iovs[k];
            hdr->msg_iovlen = 1;
            k++;
        }
        if (k == 0) {
            /* items[sent] is something only socket.sendto knows how to take: let the Python
               implementation send the rest, with its exact semantics. */
            PyObject *rest = PyList_Check(seq) ? PyList_GetSlice(seq, sent, count)
                                               : PyTuple_GetSlice(seq, sent, count);
            if (rest == NULL) {
                goto done;
            }
            PyObject *tail = call_fallback("_py_send_batch", sock, rest);
            Py_DECREF(rest);
            if (tail == NULL) {
                goto done;
            }
            Py_ssize_t tail_sent;
            PyObject *tail_error;
            if (!PyArg_ParseTuple(tail, "nO", &tail_sent, &tail_error)) {
                Py_DECREF(tail);
                goto done;
            }
            Py_INCREF(tail_error);
            Py_DECREF(tail);
            result = Py_BuildValue("(nO)", sent + tail_sent, tail_error);
            Py_DECREF(tail_error);
            goto done;
        }
        int n = sendmmsg(fd, s->msgs, k, MSG_DONTWAIT);
        if (n < 0) {
            int err = errno;
            if (err == EINTR && interrupted++ < EINTR_RETRIES) {
                if (PyErr_CheckSignals() < 0) {
                    goto done;
                }
                continue;
            }
            PyObject *error = os_error(err, NULL);
            if (error != NULL) {
                result = send_result(sent, error);
            }
            goto done;
        }
        sent += n; /* a short count: the next call reports what stopped it */
    }
    result = send_result(sent, NULL);
done:
    Py_DECREF(seq);
    return result;
}

/* ---- init ------------------------------------------------------------------------------ */

static void *function_address(PyObject *ffi, PyObject *lib, const char *name) {
    PyObject *pointer = PyObject_CallMethod(ffi, "addressof", "Os", lib, name);
    if (pointer == NULL) {
        return NULL;
    }
    PyObject *address = PyObject_CallMethod(ffi, "cast", "sO", "uintptr_t", pointer);
    Py_DECREF(pointer);
    if (address == NULL) {
        return NULL;
    }
    PyObject *number = PyNumber_Long(address);
    Py_DECREF(address);
    if (number == NULL) {
        return NULL;
    }
    void *p = PyLong_AsVoidPtr(number);
    Py_DECREF(number);
    if (p == NULL && !PyErr_Occurred()) {
        PyErr_Format(PyExc_ImportError, "OpenSSL function %s has no address", name);
    }
    return p;
}

static long lib_constant(PyObject *lib, const char *name, long fallback) {
    PyObject *value = PyObject_GetAttrString(lib, name);
    if (value == NULL) {
        PyErr_Clear();
        return fallback;
    }
    long n = PyLong_AsLong(value);
    Py_DECREF(value);
    if (n == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return fallback;
    }
    return n;
}

static PyObject *init(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "init(ffi, lib)");
        return NULL;
    }
    PyObject *ffi = args[0], *lib = args[1];
    void *read = function_address(ffi, lib, "SSL_read");
    void *write = read ? function_address(ffi, lib, "SSL_write") : NULL;
    void *get_error = write ? function_address(ffi, lib, "SSL_get_error") : NULL;
    void *bio_write = get_error ? function_address(ffi, lib, "BIO_write") : NULL;
    void *bio_read = bio_write ? function_address(ffi, lib, "BIO_read") : NULL;
    void *mem_data = bio_read ? function_address(ffi, lib, "BIO_get_mem_data") : NULL;
    void *clear = mem_data ? function_address(ffi, lib, "ERR_clear_error") : NULL;
    if (clear == NULL) {
        return NULL;
    }
    PyObject *ssl_ctype = PyObject_CallMethod(ffi, "typeof", "s", "SSL *");
    PyObject *bio_ctype = ssl_ctype ? PyObject_CallMethod(ffi, "typeof", "s", "BIO *") : NULL;
    if (bio_ctype == NULL) {
        Py_XDECREF(ssl_ctype);
        return NULL;
    }
    p_SSL_read = (ssl_io_fn)read;
    p_SSL_write = (ssl_io_fn)write;
    p_SSL_get_error = (ssl_get_error_fn)get_error;
    p_BIO_write = (bio_io_fn)bio_write;
    p_BIO_read = (bio_io_fn)bio_read;
    p_BIO_get_mem_data = (bio_get_mem_data_fn)mem_data;
    p_ERR_clear_error = (err_clear_error_fn)clear;
    g_want_read = lib_constant(lib, "SSL_ERROR_WANT_READ", 2);
    g_syscall = lib_constant(lib, "SSL_ERROR_SYSCALL", 5);
    Py_INCREF(ffi);
    Py_XSETREF(g_ffi, ffi);
    Py_XSETREF(g_ssl_ctype, ssl_ctype);
    Py_XSETREF(g_bio_ctype, bio_ctype);
    initialized = 1;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"init", (PyCFunction)(void (*)(void))init, METH_FASTCALL,
     "init(ffi, lib): take the OpenSSL function pointers from cryptography's cffi binding."},
    {"make_handle", (PyCFunction)make_handle, METH_O,
     "make_handle(connection) -> handle for an established pyOpenSSL Connection on memory BIOs."},
    {"open_record", (PyCFunction)(void (*)(void))open_record, METH_FASTCALL,
     "open_record(handle, datagram) -> plaintext bytes or an SSL_get_error code."},
    {"seal_record", (PyCFunction)(void (*)(void))seal_record, METH_FASTCALL,
     "seal_record(handle, message) -> record bytes or an SSL_get_error code."},
    {"stream_open", (PyCFunction)(void (*)(void))stream_open, METH_FASTCALL,
     "stream_open(handle, data) -> (plaintext bytes, SSL_get_error code, output bytes)."},
    {"stream_seal", (PyCFunction)(void (*)(void))stream_seal, METH_FASTCALL,
     "stream_seal(handle, data) -> record bytes or an SSL_get_error code."},
    {"recv_batch", (PyCFunction)(void (*)(void))recv_batch, METH_FASTCALL,
     "recv_batch(sock, max_count, timeout=0.0, wake=-1) -> "
     "(list of (datagram, address), OSError or None)."},
    {"send_batch", (PyCFunction)(void (*)(void))send_batch, METH_FASTCALL,
     "send_batch(sock, items) -> (number sent, OSError or None)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "dtlskit._native",
    .m_doc = "The C implementation of dtlskit._frontend.accel's primitives (see that module).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__native(void) {
    if (pthread_key_create(&scratch_key, free_scratch) != 0) {
        PyErr_SetString(PyExc_ImportError, "dtlskit._native: no thread-specific storage key");
        return NULL;
    }
    if (PyType_Ready(&HandleType) < 0) {
        return NULL;
    }
    return PyModule_Create(&module_def);
}
