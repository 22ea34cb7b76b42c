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
 * waiting on the socket): its poll runs with the GIL released. OpenSSL's error queue is per thread, so the error queue is emptied before
 * each SSL call (clear_errors: only when it holds an error) and the caller reads it (raise_error) on the same thread. Scratch buffers are
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
typedef unsigned long (*err_peek_error_fn)(void);

static ssl_io_fn p_SSL_read;
static ssl_io_fn p_SSL_write;
static ssl_get_error_fn p_SSL_get_error;
static bio_io_fn p_BIO_write;
static bio_io_fn p_BIO_read;
static bio_get_mem_data_fn p_BIO_get_mem_data;
static err_clear_error_fn p_ERR_clear_error;
static err_peek_error_fn p_ERR_peek_error;

/* Empty this thread's OpenSSL error queue. ERR_clear_error wipes all 16 slots of the queue
 * (about 800 instructions on OpenSSL 3); the queue is nearly always empty already, which
 * ERR_peek_error tells for much less, so it is only wiped when it holds an error. */
static inline void clear_errors(void) {
    if (p_ERR_peek_error() != 0) {
        p_ERR_clear_error();
    }
}

static int initialized;
static PyObject *g_ffi;          /* cryptography's FFI object */
static PyObject *g_ssl_ctype;    /* ffi.typeof("SSL *") */
static PyObject *g_bio_ctype;    /* ffi.typeof("BIO *") */
static PyObject *g_uintptr_ctype; /* ffi.typeof("uintptr_t"): make_handle casts with it */
static PyObject *g_typeof_name;  /* "typeof", "cast": interned once (make_handle runs once per */
static PyObject *g_cast_name;    /* handshake; a type parsed from text per call cost ~10 us) */

/* The head of every cffi cdata object (cffi's CDataObject, unchanged since cffi 1.0): for a
   pointer type, c_data is the pointer itself. init() checks this layout on a probe
   (ffi.cast("SSL *", N) must read back N) and make_handle reads the pointers from it only
   then; otherwise (g_direct_pointers 0) it asks ffi.cast(uintptr_t), ~2 us per pointer. */
typedef struct {
    PyObject_HEAD
    void *c_type;
    char *c_data;
} CDataHead;
static int g_direct_pointers;
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
    PyObject *ctype = PyObject_CallMethodObjArgs(g_ffi, g_typeof_name, cdata, NULL);
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
    if (g_direct_pointers) {
        void *direct = ((CDataHead *)cdata)->c_data; /* a cdata of the expected type: see above */
        if (direct == NULL) {
            PyErr_Format(PyExc_ValueError, "make_handle: the connection's %s is NULL", what);
        }
        return direct;
    }
    PyObject *address = PyObject_CallMethodObjArgs(g_ffi, g_cast_name, g_uintptr_ctype, cdata, NULL);
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
        clear_errors();
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
    clear_errors();
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

/* ---- address caches -------------------------------------------------------------------- */

/* A server hears the same few peers over and over. Two small direct-mapped caches, used with
 * the GIL held, spare the per-datagram address work:
 *  - received: an IPv4/IPv6 sockaddr -> the address tuple made for it last time, so a peer's
 *    datagrams carry one tuple object (no new string and tuple per datagram; the engine's
 *    dict lookup then matches the key it holds by identity, without comparing tuples);
 *  - sent: an address object (by identity: the cache holds a reference, so the object cannot
 *    be freed and its address reused while cached) -> the sockaddr parsed from it.
 * Both are bounded (ADDRESS_SLOTS entries each: about 40 KiB plus the tuples held) and a
 * collision just replaces the entry. What they return equals what they would compute. */
#define ADDRESS_SLOTS 512

typedef struct {
    PyObject *address; /* NULL: empty */
    socklen_t len;
    int family;
    struct sockaddr_storage name;
} AddressSlot;

static AddressSlot received_addresses[ADDRESS_SLOTS];
static AddressSlot sent_addresses[ADDRESS_SLOTS];

static size_t sockaddr_slot(const struct sockaddr_storage *ss, socklen_t len) {
    const unsigned char *p = (const unsigned char *)ss;
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (socklen_t i = 0; i < len; i++) {
        h = (h ^ p[i]) * 1099511628211ULL;
    }
    return (size_t)(h ^ (h >> 29)) % ADDRESS_SLOTS;
}

static PyObject *cached_make_address(const struct sockaddr_storage *ss, socklen_t len) {
    if ((ss->ss_family != AF_INET && ss->ss_family != AF_INET6) || len <= 0 ||
        (size_t)len > sizeof(*ss)) {
        return make_address(ss, len);
    }
    AddressSlot *slot = &received_addresses[sockaddr_slot(ss, len)];
    if (slot->address != NULL && slot->len == len && memcmp(&slot->name, ss, (size_t)len) == 0) {
        Py_INCREF(slot->address);
        return slot->address;
    }
    PyObject *address = make_address(ss, len);
    if (address == NULL) {
        return NULL;
    }
    Py_INCREF(address);
    Py_XSETREF(slot->address, address);
    slot->len = len;
    memcpy(&slot->name, ss, (size_t)len);
    return address;
}

static int cached_parse_address(int family, PyObject *address, struct sockaddr_storage *ss,
                                socklen_t *len) {
    AddressSlot *slot = &sent_addresses[((uintptr_t)address >> 4) % ADDRESS_SLOTS];
    if (slot->address == address && slot->family == family) {
        memcpy(ss, &slot->name, (size_t)slot->len);
        *len = slot->len;
        return 1;
    }
    int parsed = parse_address(family, address, ss, len);
    if (parsed == 1 && (size_t)*len <= sizeof(slot->name)) {
        Py_INCREF(address);
        Py_XSETREF(slot->address, address);
        slot->family = family;
        slot->len = *len;
        memcpy(&slot->name, ss, (size_t)*len);
    }
    return parsed;
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
                address = cached_make_address(&s->names[i], hdr->msg_namelen);
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
                int parsed = cached_parse_address(family, address, &s->names[k], &len);
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

/* Whether a pointer cdata holds its pointer where CDataHead says (see there): 1 yes, 0 no. */
static int cdata_layout_holds(PyObject *ffi) {
    const uintptr_t probe_value = (uintptr_t)0x5a5a1230u;
    PyObject *probe = PyObject_CallMethod(ffi, "cast", "sk", "SSL *", (unsigned long)probe_value);
    if (probe == NULL) {
        PyErr_Clear();
        return 0;
    }
    int holds = Py_TYPE(probe)->tp_basicsize >= (Py_ssize_t)sizeof(CDataHead) &&
                (uintptr_t)((CDataHead *)probe)->c_data == probe_value;
    Py_DECREF(probe);
    return holds;
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
    void *peek = clear ? function_address(ffi, lib, "ERR_peek_error") : NULL;
    if (peek == NULL) {
        return NULL;
    }
    PyObject *ssl_ctype = PyObject_CallMethod(ffi, "typeof", "s", "SSL *");
    PyObject *bio_ctype = ssl_ctype ? PyObject_CallMethod(ffi, "typeof", "s", "BIO *") : NULL;
    PyObject *uintptr_ctype =
        bio_ctype ? PyObject_CallMethod(ffi, "typeof", "s", "uintptr_t") : NULL;
    PyObject *typeof_name = uintptr_ctype ? PyUnicode_InternFromString("typeof") : NULL;
    PyObject *cast_name = typeof_name ? PyUnicode_InternFromString("cast") : NULL;
    if (cast_name == NULL) {
        Py_XDECREF(ssl_ctype);
        Py_XDECREF(bio_ctype);
        Py_XDECREF(uintptr_ctype);
        Py_XDECREF(typeof_name);
        return NULL;
    }
    p_SSL_read = (ssl_io_fn)read;
    p_SSL_write = (ssl_io_fn)write;
    p_SSL_get_error = (ssl_get_error_fn)get_error;
    p_BIO_write = (bio_io_fn)bio_write;
    p_BIO_read = (bio_io_fn)bio_read;
    p_BIO_get_mem_data = (bio_get_mem_data_fn)mem_data;
    p_ERR_clear_error = (err_clear_error_fn)clear;
    p_ERR_peek_error = (err_peek_error_fn)peek;
    g_want_read = lib_constant(lib, "SSL_ERROR_WANT_READ", 2);
    g_syscall = lib_constant(lib, "SSL_ERROR_SYSCALL", 5);
    Py_INCREF(ffi);
    Py_XSETREF(g_ffi, ffi);
    Py_XSETREF(g_ssl_ctype, ssl_ctype);
    Py_XSETREF(g_bio_ctype, bio_ctype);
    Py_XSETREF(g_uintptr_ctype, uintptr_ctype);
    Py_XSETREF(g_typeof_name, typeof_name);
    Py_XSETREF(g_cast_name, cast_name);
    g_direct_pointers = cdata_layout_holds(ffi);
    initialized = 1;
    Py_RETURN_NONE;
}

/* ---- the callback handler's message call ----------------------------------------------- */

/* ProtocolCall(received, failed): the engine's on_message for a callback-style session
 * (dtlskit._frontend.channel_base._ProtocolCall in C). Calling it with one message calls
 * received(message); if that raises an Exception, failed(exception) is called instead of
 * raising (it logs and closes the session later); a BaseException that is not an Exception
 * (KeyboardInterrupt, SystemExit) propagates, as the Python class lets it. Returns None. No
 * Python frame of its own: one call less per message. Decides nothing. */
#ifndef Py_TPFLAGS_HAVE_VECTORCALL
#define Py_TPFLAGS_HAVE_VECTORCALL _Py_TPFLAGS_HAVE_VECTORCALL
#endif

typedef struct {
    PyObject_HEAD
    PyObject *received;
    PyObject *failed;
    vectorcallfunc vectorcall;
} ProtocolCall;

static PyObject *protocol_call_vectorcall(PyObject *self, PyObject *const *args, size_t nargsf,
                                          PyObject *kwnames) {
    ProtocolCall *pc = (ProtocolCall *)self;
    if (PyVectorcall_NARGS(nargsf) != 1 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames))) {
        PyErr_SetString(PyExc_TypeError, "ProtocolCall takes one message");
        return NULL;
    }
    if (pc->received == NULL || pc->failed == NULL) {
        PyErr_SetString(PyExc_ValueError, "this ProtocolCall was cleared");
        return NULL;
    }
    PyObject *result = PyObject_Vectorcall(pc->received, args, 1, NULL);
    if (result != NULL) {
        Py_DECREF(result);
        Py_RETURN_NONE;
    }
    if (!PyErr_ExceptionMatches(PyExc_Exception)) {
        return NULL;
    }
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    PyErr_NormalizeException(&type, &value, &traceback);
    if (traceback != NULL && value != NULL) {
        PyException_SetTraceback(value, traceback);
    }
    Py_XDECREF(type);
    Py_XDECREF(traceback);
    if (value == NULL) { /* cannot happen once normalized; be safe */
        Py_RETURN_NONE;
    }
    PyObject *done = PyObject_CallOneArg(pc->failed, value);
    Py_DECREF(value);
    if (done == NULL) {
        return NULL;
    }
    Py_DECREF(done);
    Py_RETURN_NONE;
}

static PyObject *protocol_call_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    PyObject *received, *failed;
    static char *keywords[] = {"received", "failed", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO:ProtocolCall", keywords, &received,
                                     &failed)) {
        return NULL;
    }
    if (!PyCallable_Check(received) || !PyCallable_Check(failed)) {
        PyErr_SetString(PyExc_TypeError, "ProtocolCall(received, failed) takes two callables");
        return NULL;
    }
    ProtocolCall *pc = (ProtocolCall *)type->tp_alloc(type, 0);
    if (pc == NULL) {
        return NULL;
    }
    Py_INCREF(received);
    Py_INCREF(failed);
    pc->received = received;
    pc->failed = failed;
    pc->vectorcall = protocol_call_vectorcall;
    return (PyObject *)pc;
}

static int protocol_call_traverse(ProtocolCall *self, visitproc visit, void *arg) {
    Py_VISIT(self->received);
    Py_VISIT(self->failed);
    return 0;
}

static int protocol_call_clear(ProtocolCall *self) {
    Py_CLEAR(self->received);
    Py_CLEAR(self->failed);
    return 0;
}

static void protocol_call_dealloc(ProtocolCall *self) {
    PyObject_GC_UnTrack(self);
    protocol_call_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMemberDef protocol_call_members[] = {
    {"received", T_OBJECT, offsetof(ProtocolCall, received), READONLY,
     "what a message is given to (the protocol's message_received)"},
    {"failed", T_OBJECT, offsetof(ProtocolCall, failed), READONLY,
     "called with the exception when received raises one"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject ProtocolCallType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "dtlskit._native.ProtocolCall",
    .tp_doc = "ProtocolCall(received, failed): call received(message); on an Exception, "
              "failed(exception) instead of raising.",
    .tp_basicsize = sizeof(ProtocolCall),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_new = protocol_call_new,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(ProtocolCall, vectorcall),
    .tp_traverse = (traverseproc)protocol_call_traverse,
    .tp_clear = (inquiry)protocol_call_clear,
    .tp_dealloc = (destructor)protocol_call_dealloc,
    .tp_members = protocol_call_members,
};

/* ---- the established fast path of a server's read batch ---------------------------------- */

/* receive_established(connections, batch, start, now, server_statistics)
 *     -> (stop, error, address)
 *
 * DTLSConnection.receive_record's fast path, in C, for a server's read batch (called by
 * ServerEngine.receive_batch, which owns every decision about what this may do). From
 * batch[start], while each (datagram, address) is exactly one application-data record
 * (type 23, length field + 13 == size) of an association in `connections` (the engine's
 * address -> DTLSConnection dict) that is established on OpenSSL objects (its `_handle` is one
 * of ours), whose Finished is not pending and which has a consumer (its `on_message`, else its
 * `inbox`), it does what receive_record does, in the same order and on the same attributes:
 * the server's two counters (server_statistics: the engine's), the session's counters, the
 * record opened by OpenSSL, the highest read sequence, the idle
 * deadline, then the message to on_message (the C ProtocolCall of a callback-style session:
 * no Python frame), or inbox.offer (a refusal goes to _report_drop), or, if OpenSSL returned
 * no data, _record_failed(code, datagram) in Python. It stops at the first datagram it may
 * not take, untouched, and returns its index (Python's general path takes it), None, None.
 * An Exception out of a Python call while taking a datagram stops it there: that datagram
 * was taken (and counted), and the index after it, the exception and the datagram's address
 * are returned (Python's loop reports it and goes on, as for a datagram it handles itself);
 * a BaseException propagates, every datagram taken so far counted. Counting per datagram
 * keeps what a callback reading statistics() sees the same as without the accelerator. The
 * bytes are untrusted: only the 13-byte header's type and length are read here; OpenSSL
 * parses the record. */
static PyObject *s_handle, *s_on_message, *s_inbox, *s_final_pending, *s_stats, *s_read_high,
    *s_idle_timeout, *s_idle_deadline, *s_datagrams_received, *s_bytes_received,
    *s_messages_received, *s_offer, *s_report_drop, *s_record_failed;

static int intern_names(void) {
#define INTERN(var, text)                                                                     \
    if (var == NULL && (var = PyUnicode_InternFromString(text)) == NULL) {                    \
        return -1;                                                                            \
    }
    INTERN(s_handle, "_handle");
    INTERN(s_on_message, "on_message");
    INTERN(s_inbox, "inbox");
    INTERN(s_final_pending, "_final_pending");
    INTERN(s_stats, "_stats");
    INTERN(s_read_high, "_read_high");
    INTERN(s_idle_timeout, "_idle_timeout");
    INTERN(s_idle_deadline, "_idle_deadline");
    INTERN(s_datagrams_received, "datagrams_received");
    INTERN(s_bytes_received, "bytes_received");
    INTERN(s_messages_received, "messages_received");
    INTERN(s_offer, "offer");
    INTERN(s_report_drop, "_report_drop");
    INTERN(s_record_failed, "_record_failed");
#undef INTERN
    return 0;
}

/* obj.name += amount (Python's semantics: whatever + and setattr do). */
static int add_to_attr(PyObject *obj, PyObject *name, Py_ssize_t amount) {
    PyObject *value = PyObject_GetAttr(obj, name);
    if (value == NULL) {
        return -1;
    }
    PyObject *step = PyLong_FromSsize_t(amount);
    PyObject *sum = step ? PyNumber_Add(value, step) : NULL;
    Py_DECREF(value);
    Py_XDECREF(step);
    if (sum == NULL) {
        return -1;
    }
    int done = PyObject_SetAttr(obj, name, sum);
    Py_DECREF(sum);
    return done;
}

/* 1: conn may take the fast path now (its handle in *handle, its consumer in *callback or
 * *inbox, new references); 0: not (nothing held); -1: error. */
static int fast_session(PyObject *conn, Handle **handle, PyObject **callback, PyObject **inbox) {
    *handle = NULL;
    *callback = *inbox = NULL;
    PyObject *h = PyObject_GetAttr(conn, s_handle);
    if (h == NULL) {
        return -1;
    }
    if (!PyObject_TypeCheck(h, &HandleType) || ((Handle *)h)->ssl == NULL ||
        ((Handle *)h)->rbio == NULL || ((Handle *)h)->wbio == NULL) {
        Py_DECREF(h); /* None (hibernated, not established) or cleared: Python's path */
        return 0;
    }
    PyObject *pending = PyObject_GetAttr(conn, s_final_pending);
    if (pending == NULL) {
        Py_DECREF(h);
        return -1;
    }
    int final_pending = pending != Py_False;
    Py_DECREF(pending);
    if (final_pending) {
        Py_DECREF(h);
        return 0;
    }
    PyObject *cb = PyObject_GetAttr(conn, s_on_message);
    if (cb == NULL) {
        Py_DECREF(h);
        return -1;
    }
    if (cb == Py_None) {
        Py_DECREF(cb);
        PyObject *box = PyObject_GetAttr(conn, s_inbox);
        if (box == NULL) {
            Py_DECREF(h);
            return -1;
        }
        if (box == Py_None) { /* no consumer yet: an event, Python's path */
            Py_DECREF(box);
            Py_DECREF(h);
            return 0;
        }
        *inbox = box;
    } else {
        *callback = cb;
    }
    *handle = (Handle *)h;
    return 1;
}

/* What receive_record does once the fast path applies; 0 or -1 (error). */
static int take_record(PyObject *conn, Handle *h, PyObject *callback, PyObject *inbox,
                       PyObject *data, PyObject *now) {
    const char *p = PyBytes_AS_STRING(data);
    Py_ssize_t len = PyBytes_GET_SIZE(data);
    PyObject *stats = PyObject_GetAttr(conn, s_stats);
    if (stats == NULL) {
        return -1;
    }
    int failed = add_to_attr(stats, s_datagrams_received, 1) < 0 ||
                 add_to_attr(stats, s_bytes_received, len) < 0;
    if (failed) {
        Py_DECREF(stats);
        return -1;
    }
    Scratch *scratch = get_scratch(0);
    if (scratch == NULL) {
        Py_DECREF(stats);
        return -1;
    }
    long code;
    PyObject *plaintext = NULL;
    clear_errors();
    if (len > INT_MAX || p_BIO_write(h->rbio, (void *)p, (int)len) <= 0) {
        code = g_syscall;
    } else {
        int n = p_SSL_read(h->ssl, scratch->plaintext, PLAINTEXT_MAX);
        if (n > 0) {
            plaintext = PyBytes_FromStringAndSize(scratch->plaintext, n);
            if (plaintext == NULL) {
                Py_DECREF(stats);
                return -1;
            }
            code = 0;
        } else {
            code = p_SSL_get_error(h->ssl, n);
        }
    }
    if (plaintext == NULL) { /* OpenSSL gave no data: Python judges it */
        Py_DECREF(stats);
        PyObject *code_object = PyLong_FromLong(code);
        if (code_object == NULL) {
            return -1;
        }
        PyObject *result =
            PyObject_CallMethodObjArgs(conn, s_record_failed, code_object, data, NULL);
        Py_DECREF(code_object);
        if (result == NULL) {
            return -1;
        }
        Py_DECREF(result);
        return 0;
    }
    int status = -1;
    PyObject *sequence = NULL, *high = NULL, *idle = NULL, *result = NULL;
    if (add_to_attr(stats, s_messages_received, 1) < 0) {
        goto out;
    }
    sequence = PyBytes_FromStringAndSize(p + 3, 8);
    high = sequence ? PyObject_GetAttr(conn, s_read_high) : NULL;
    if (high == NULL) {
        goto out;
    }
    int later = PyObject_RichCompareBool(sequence, high, Py_GT);
    if (later < 0 || (later && PyObject_SetAttr(conn, s_read_high, sequence) < 0)) {
        goto out;
    }
    idle = PyObject_GetAttr(conn, s_idle_timeout);
    if (idle == NULL) {
        goto out;
    }
    if (idle != Py_None) {
        PyObject *deadline = PyNumber_Add(now, idle);
        if (deadline == NULL) {
            goto out;
        }
        int set = PyObject_SetAttr(conn, s_idle_deadline, deadline);
        Py_DECREF(deadline);
        if (set < 0) {
            goto out;
        }
    }
    if (callback != NULL) {
        result = PyObject_Vectorcall(callback, &plaintext, 1, NULL);
        if (result == NULL) {
            goto out;
        }
    } else {
        result = PyObject_CallMethodOneArg(inbox, s_offer, plaintext);
        if (result == NULL) {
            goto out;
        }
        if (result != Py_None) { /* the bound's reason: counted as receive_record counts it */
            PyObject *dropped = PyObject_CallMethodOneArg(conn, s_report_drop, result);
            if (dropped == NULL) {
                goto out;
            }
            Py_DECREF(dropped);
        }
    }
    status = 0;
out:
    Py_XDECREF(result);
    Py_XDECREF(idle);
    Py_XDECREF(high);
    Py_XDECREF(sequence);
    Py_DECREF(plaintext);
    Py_DECREF(stats);
    return status;
}

static PyObject *receive_established(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5 || !PyDict_Check(args[0]) || !PyList_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "receive_established(connections: dict, batch: list, "
                                         "start, now, server_statistics)");
        return NULL;
    }
    if (require_init() < 0 || intern_names() < 0) {
        return NULL;
    }
    PyObject *connections = args[0], *batch = args[1], *now = args[3], *server_stats = args[4];
    Py_ssize_t i = PyNumber_AsSsize_t(args[2], PyExc_OverflowError);
    if (i == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (i < 0) {
        i = 0;
    }
    while (i < PyList_GET_SIZE(batch)) { /* (re-read: a Python call may change the list) */
        PyObject *item = PyList_GET_ITEM(batch, i);
        if (!PyTuple_CheckExact(item) || PyTuple_GET_SIZE(item) != 2) {
            break;
        }
        PyObject *data = PyTuple_GET_ITEM(item, 0);
        if (!PyBytes_CheckExact(data)) {
            break;
        }
        Py_ssize_t len = PyBytes_GET_SIZE(data);
        const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(data);
        if (len < 13 || p[0] != 23 || len != 13 + ((Py_ssize_t)p[11] << 8 | p[12])) {
            break;
        }
        Py_INCREF(item); /* keeps data and address alive through the Python calls */
        PyObject *conn = PyDict_GetItemWithError(connections, PyTuple_GET_ITEM(item, 1));
        if (conn == NULL) {
            Py_DECREF(item);
            if (PyErr_Occurred()) {
                return NULL;
            }
            break;
        }
        Py_INCREF(conn);
        Handle *h;
        PyObject *callback, *inbox;
        int fast = fast_session(conn, &h, &callback, &inbox);
        if (fast <= 0) {
            Py_DECREF(conn);
            Py_DECREF(item);
            if (fast < 0) {
                return NULL;
            }
            break;
        }
        /* The server's counters first, per datagram, as Python's loop counts them. */
        int done = add_to_attr(server_stats, s_datagrams_received, 1) < 0 ||
                           add_to_attr(server_stats, s_bytes_received, len) < 0
                       ? -1
                       : take_record(conn, h, callback, inbox, data, now);
        Py_DECREF(h);
        Py_XDECREF(callback);
        Py_XDECREF(inbox);
        Py_DECREF(conn);
        i += 1;
        if (done < 0) {
            /* That datagram was taken (and counted) when its handling raised: hand the
             * exception back with the progress and its address, as Python's loop reports it
             * and goes on. */
            if (!PyErr_ExceptionMatches(PyExc_Exception)) {
                Py_DECREF(item);
                return NULL; /* KeyboardInterrupt, SystemExit: propagate (counted already) */
            }
            PyObject *type, *value, *traceback;
            PyErr_Fetch(&type, &value, &traceback);
            PyErr_NormalizeException(&type, &value, &traceback);
            if (traceback != NULL && value != NULL) {
                PyException_SetTraceback(value, traceback);
            }
            Py_XDECREF(type);
            Py_XDECREF(traceback);
            PyObject *out = Py_BuildValue("(nOO)", i, value != NULL ? value : Py_None,
                                          PyTuple_GET_ITEM(item, 1));
            Py_XDECREF(value);
            Py_DECREF(item);
            return out;
        }
        Py_DECREF(item);
    }
    return Py_BuildValue("(nOO)", i, Py_None, Py_None);
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
    {"receive_established", (PyCFunction)(void (*)(void))receive_established, METH_FASTCALL,
     "receive_established(connections, batch, start, now, server_statistics) -> "
     "(stop, error, address): "
     "DTLSConnection.receive_record's fast path for a server's batch (see the source)."},
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
    if (PyType_Ready(&HandleType) < 0 || PyType_Ready(&ProtocolCallType) < 0) {
        return NULL;
    }
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL) {
        return NULL;
    }
    Py_INCREF(&ProtocolCallType);
    if (PyModule_AddObject(module, "ProtocolCall", (PyObject *)&ProtocolCallType) < 0) {
        Py_DECREF(&ProtocolCallType);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
