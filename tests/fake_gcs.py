"""A fake Google Cloud Storage server on 127.0.0.1, so that `gs://` paths run in a test.

Three clients write a training run's `gs://` workdir, and each is pointed here differently:
- TensorFlow's C++ GCS filesystem (`tf.io.gfile`: our code and orbax's metadata through
  `etils.epath`, clu's TensorBoard writer) has no endpoint setting: it calls
  https://www.googleapis.com (JSON API) and https://storage.googleapis.com (reads) with libcurl,
  which honours `HTTPS_PROXY`. So this server is also that proxy: it answers `CONNECT` with 200,
  wraps the socket in TLS with a certificate for those two hosts (made by `trustme`, trusted
  through `CURL_CA_BUNDLE`) and serves the tunnelled requests itself.
- tensorstore (orbax's arrays) takes `TENSORSTORE_GCS_HTTP_URL=http://127.0.0.1:PORT`.
- google-cloud-storage (orbax asks it whether the bucket has a hierarchical namespace) takes
  `STORAGE_EMULATOR_HOST=http://127.0.0.1:PORT`.
`Server.environment()` gives those variables, and the fixed test tokens that skip OAuth.

What it implements (JSON API paths under /storage/v1 and /upload/storage/v1), and who calls it:
- GET  b/BUCKET: the bucket (TF's bucket check, google-cloud-storage's get_bucket).
- GET  b/BUCKET/o ?prefix &delimiter &startOffset &endOffset &maxResults &pageToken: listing,
  with `prefixes` under a delimiter (TF's listing and is_directory, tensorstore's list).
- GET  b/BUCKET/o/OBJECT: metadata (TF's stat); with alt=media the bytes, honouring `Range` (TF
  does not read this way, tensorstore does).
- GET  /BUCKET/OBJECT on storage.googleapis.com: the bytes with `Range` (TF's reads).
- POST upload/.../b/BUCKET/o ?uploadType=media|resumable &name: uploads (tensorstore:
  media; TF: media for its empty `dir/` markers, resumable for files, then PUT to the session
  with `Content-Range: bytes A-B/N`, or `bytes */N` to ask how much arrived).
- DELETE b/BUCKET/o/OBJECT (TF's delete and rmtree, tensorstore's delete).
- POST b/B/o/OBJECT/rewriteTo/b/B2/o/OBJECT2: a copy (TF's rename is a copy, then a delete).
- `ifGenerationMatch` / `ifGenerationNotMatch` on reads, uploads and deletes (tensorstore's
  conditional writes: 412 when not met, 304 on an unchanged read); every object has a
  generation, sent as `x-goog-generation` with its bytes.
Any other request is answered 501 (a CONNECT to another host 403) and recorded in
`Server.unhandled`, so a test can fail on it; `Server.requests` lists every request with its
client. Objects live in memory (`Server.objects`: {(bucket, name): Blob}, each with the client
that wrote it; a copy keeps the writer of its source); nothing touches the disk but the
temporary certificate file.
"""

import datetime
import http.server
import itertools
import json
import os
import re
import socketserver
import ssl
import tempfile
import threading
import urllib.parse
from typing import Dict, List, NamedTuple, Optional, Tuple

import trustme

HOSTS = ('www.googleapis.com', 'storage.googleapis.com')
PAGE_SIZE = 1000


class Blob(NamedTuple):
  data: bytes
  generation: int
  updated: str
  writer: str  # the client that wrote it (`_Handler._client`)


class Server:
  """The fake GCS server and HTTPS proxy, on a free port of 127.0.0.1, in a daemon thread."""

  def __init__(self, buckets: Tuple[str, ...] = ('test-bucket',)):
    self.buckets = set(buckets)
    self.objects: Dict[Tuple[str, str], Blob] = {}
    self.unhandled: List[str] = []
    self.requests: List[Tuple[str, str, str, str]] = []  # (method, host, path, client)
    self.lock = threading.Lock()
    self._generations = itertools.count(1)
    self.uploads: Dict[str, dict] = {}  # resumable upload id -> {bucket, name, data}
    authority = trustme.CA()
    self.tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert(*HOSTS).configure_cert(self.tls_context)
    self.tls_context.set_alpn_protocols(['http/1.1'])
    self._ca_dir = tempfile.TemporaryDirectory(prefix='fake_gcs_ca_')
    self.ca_file = os.path.join(self._ca_dir.name, 'ca.pem')
    authority.cert_pem.write_to_path(self.ca_file)
    self._httpd = _ThreadingServer(('127.0.0.1', 0), _Handler)
    self._httpd.fake = self
    self.port = self._httpd.server_address[1]
    self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

  def __enter__(self) -> 'Server':
    self._thread.start()
    return self

  def __exit__(self, *exc) -> None:
    self._httpd.shutdown()
    self._httpd.server_close()
    self._ca_dir.cleanup()

  def environment(self) -> Dict[str, str]:
    """The variables that send TF, tensorstore and google-cloud-storage here."""
    url = f'http://127.0.0.1:{self.port}'
    return {'HTTPS_PROXY': url, 'https_proxy': url, 'NO_PROXY': '127.0.0.1,localhost',
            'no_proxy': '127.0.0.1,localhost', 'CURL_CA_BUNDLE': self.ca_file,
            'GOOGLE_AUTH_TOKEN_FOR_TESTING': 'fake-token', 'TENSORSTORE_GCS_HTTP_URL': url,
            'STORAGE_EMULATOR_HOST': url, 'GOOGLE_CLOUD_PROJECT': 'fake-project'}

  def names(self, bucket: str, prefix: str = '') -> List[str]:
    """The sorted object names of `bucket` that start with `prefix`."""
    with self.lock:
      return sorted(n for b, n in self.objects if b == bucket and n.startswith(prefix))

  # --- Object store: each call atomic under the lock -----------------------------------------
  def put(self, bucket: str, name: str, data: bytes, writer: str,
          if_generation: Optional[int] = None) -> Optional[Blob]:
    """Stores an object; None (nothing stored) when `if_generation` is not its generation (0 =
    absent)."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%S.%fZ')
    with self.lock:
      if if_generation is not None and if_generation != _generation(self.objects, bucket, name):
        return None
      blob = Blob(data, next(self._generations), now, writer)
      self.objects[bucket, name] = blob
    return blob

  def start_upload(self, bucket: str, name: str, if_generation: Optional[int]) -> str:
    with self.lock:
      upload_id = str(next(self._generations))
      self.uploads[upload_id] = {'bucket': bucket, 'name': name, 'data': b'',
                                 'if_generation': if_generation}
    return upload_id

  def get(self, bucket: str, name: str) -> Optional[Blob]:
    with self.lock:
      return self.objects.get((bucket, name))

  def delete(self, bucket: str, name: str, if_generation: Optional[int] = None) -> Optional[bool]:
    """Whether the object existed and was deleted; None when `if_generation` does not match."""
    with self.lock:
      if if_generation is not None and if_generation != _generation(self.objects, bucket, name):
        return None
      return self.objects.pop((bucket, name), None) is not None


def _generation(objects: Dict[Tuple[str, str], Blob], bucket: str, name: str) -> int:
  blob = objects.get((bucket, name))
  return blob.generation if blob else 0


class _ThreadingServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
  daemon_threads = True
  allow_reuse_address = True


def resource(bucket: str, name: str, blob: Blob) -> dict:
  """An object's JSON API resource."""
  return {'kind': 'storage#object', 'id': f'{bucket}/{name}/{blob.generation}', 'name': name,
          'bucket': bucket, 'size': str(len(blob.data)), 'generation': str(blob.generation),
          'metageneration': '1', 'contentType': 'application/octet-stream',
          'timeCreated': blob.updated, 'updated': blob.updated, 'storageClass': 'STANDARD'}


class _Handler(http.server.BaseHTTPRequestHandler):
  """One connection: plain HTTP, or a CONNECT tunnel turned into TLS, then GCS requests."""
  protocol_version = 'HTTP/1.1'
  tls = False

  def log_message(self, *args):  # quiet: the test reads `Server.unhandled` instead
    pass

  @property
  def fake(self) -> Server:
    return self.server.fake

  def do_CONNECT(self):  # pylint: disable=invalid-name
    host = self.path.split(':')[0].rstrip('.')
    if host not in HOSTS:
      self.fake.unhandled.append(f'CONNECT {self.path}')
      self._fail(403, f'CONNECT to {self.path}')
      return
    self.send_response(200, 'Connection established')
    self.end_headers()
    self.wfile.flush()
    connection = self.fake.tls_context.wrap_socket(self.connection, server_side=True)
    self.connection, self.tls = connection, True
    self.rfile = connection.makefile('rb')
    self.wfile = socketserver._SocketWriter(connection)  # pylint: disable=protected-access
    self.close_connection = False

  def _dispatch(self):
    self._route(self.command)

  # BaseHTTPRequestHandler looks up do_<METHOD>; every method goes through one router.
  do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _dispatch  # pylint: disable=C0103

  # --- Routing ---------------------------------------------------------------------------------
  def _route(self, method: str) -> None:
    url = urllib.parse.urlsplit(self.path)
    query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query, keep_blank_values=True).items()}
    body = self._body()
    self.fake.requests.append((method, self._host(), self.path, self._client()))
    path = url.path
    match = re.fullmatch(r'/upload/storage/v1/b/([^/]+)/o', path)
    if match and method == 'POST':
      return self._upload(match.group(1), query, body)
    if match and method == 'PUT' and 'upload_id' in query:
      return self._resume(query['upload_id'], body)
    match = re.fullmatch(r'/storage/v1/b/([^/]+)/o/(.+)/rewriteTo/b/([^/]+)/o/(.+)', path)
    if match and method == 'POST':
      return self._copy(match.group(1), _unquote(match.group(2)), match.group(3),
                        _unquote(match.group(4)))
    match = re.fullmatch(r'/storage/v1/b/([^/]+)/o/(.+)', path)
    if match and method in ('GET', 'DELETE'):
      bucket, name = match.group(1), _unquote(match.group(2))
      if method == 'DELETE':
        return self._delete(bucket, name, query)
      return self._read(bucket, name, query, media=query.get('alt') == 'media')
    match = re.fullmatch(r'/storage/v1/b/([^/]+)/o', path)
    if match and method == 'GET':
      return self._list(match.group(1), query)
    match = re.fullmatch(r'/storage/v1/b/([^/]+)', path)
    if match and method == 'GET':
      return self._bucket(match.group(1))
    match = re.fullmatch(r'/([^/]+)/(.+)', path)
    if match and method == 'GET' and self._host() == 'storage.googleapis.com':
      return self._read(match.group(1), _unquote(match.group(2)), query, media=True)
    self._fail(501, f'{method} {self._host()}{self.path}')

  def _host(self) -> str:
    return (self.headers.get('Host') or '').split(':')[0].rstrip('.')

  def _client(self) -> str:
    """The client library: the first word of the User-Agent ('TSL' is TensorFlow's)."""
    return (self.headers.get('User-Agent') or '?').split('/')[0].split()[0]

  def _body(self) -> bytes:
    """The request body, sent with Content-Length or chunked."""
    if 'chunked' not in (self.headers.get('Transfer-Encoding') or '').lower():
      return self.rfile.read(int(self.headers.get('Content-Length') or 0))
    chunks = []
    while True:
      size = int(self.rfile.readline().split(b';')[0].strip() or b'0', 16)
      if not size:
        while self.rfile.readline().strip():  # trailers, then the blank line
          pass
        return b''.join(chunks)
      chunks.append(self.rfile.read(size))
      self.rfile.readline()

  # --- Responses -------------------------------------------------------------------------------
  def _send(self, status: int, body: bytes = b'', headers: Optional[Dict[str, str]] = None,
            content_type: str = 'application/json; charset=UTF-8') -> None:
    self.send_response(status)
    for key, value in (headers or {}).items():
      self.send_header(key, value)
    if status not in (204, 304):
      self.send_header('Content-Type', content_type)
    self.send_header('Content-Length', str(len(body)))
    self.end_headers()
    if body and self.command != 'HEAD':
      self.wfile.write(body)

  def _json(self, status: int, value: dict, headers: Optional[Dict[str, str]] = None) -> None:
    self._send(status, json.dumps(value).encode(), headers)

  def _fail(self, status: int, what: str) -> None:
    if status == 501:
      self.fake.unhandled.append(what)
    self._json(status, {'error': {'code': status, 'message': what}})

  def _missing(self, bucket: str, name: str) -> None:
    self._json(404, {'error': {'code': 404, 'message': f'No such object: {bucket}/{name}'}})

  def _refused(self) -> None:
    self._json(412, {'error': {'code': 412, 'message': 'Precondition Failed'}})

  # --- Handlers --------------------------------------------------------------------------------
  def _bucket(self, bucket: str) -> None:
    if bucket not in self.fake.buckets:
      self._json(404, {'error': {'code': 404, 'message': f'No such bucket: {bucket}'}})
      return
    self._json(200, {'kind': 'storage#bucket', 'id': bucket, 'name': bucket,
                     'location': 'US', 'storageClass': 'STANDARD', 'metageneration': '1'})

  def _read(self, bucket: str, name: str, query: Dict[str, str], media: bool) -> None:
    blob = self.fake.get(bucket, name)
    if blob is None:
      self._missing(bucket, name)
      return
    if 'ifGenerationMatch' in query and int(query['ifGenerationMatch']) != blob.generation:
      self._refused()
      return
    if 'ifGenerationNotMatch' in query and int(query['ifGenerationNotMatch']) == blob.generation:
      self._send(304, b'', {'x-goog-generation': str(blob.generation)})
      return
    if not media:
      self._json(200, resource(bucket, name, blob))
      return
    headers = {'x-goog-generation': str(blob.generation), 'x-goog-metageneration': '1',
               'x-goog-stored-content-length': str(len(blob.data)),
               'Last-Modified': blob.updated}
    span = _range(self.headers.get('Range'), len(blob.data))
    if span is None:
      self._send(200, blob.data, headers, 'application/octet-stream')
    elif span == 'unsatisfiable':
      headers['Content-Range'] = f'bytes */{len(blob.data)}'
      self._send(416, b'', headers)
    else:
      first, last = span
      headers['Content-Range'] = f'bytes {first}-{last}/{len(blob.data)}'
      self._send(206, blob.data[first:last + 1], headers, 'application/octet-stream')

  def _list(self, bucket: str, query: Dict[str, str]) -> None:
    if bucket not in self.fake.buckets:
      self._json(404, {'error': {'code': 404, 'message': f'No such bucket: {bucket}'}})
      return
    prefix, delimiter = query.get('prefix', ''), query.get('delimiter', '')
    start, end = query.get('startOffset', ''), query.get('endOffset')
    entries = {}  # name -> None (a prefix) or Blob
    for name in self.fake.names(bucket, prefix):
      if name < start or (end and name >= end):
        continue
      cut = name.find(delimiter, len(prefix)) if delimiter else -1
      if cut >= 0:
        entries[name[:cut + len(delimiter)]] = None
      else:
        entries[name] = self.fake.get(bucket, name)
    names = sorted(entries)
    first = int(query.get('pageToken') or 0)
    size = int(query.get('maxResults') or PAGE_SIZE)
    page = names[first:first + size]
    result = {'kind': 'storage#objects'}
    items = [resource(bucket, n, entries[n]) for n in page if entries[n] is not None]
    prefixes = [n for n in page if entries[n] is None]
    if items:
      result['items'] = items
    if prefixes:
      result['prefixes'] = prefixes
    if first + size < len(names):
      result['nextPageToken'] = str(first + size)
    self._json(200, result)

  def _upload(self, bucket: str, query: Dict[str, str], body: bytes) -> None:
    kind, name = query.get('uploadType', 'media'), query.get('name', '')
    if not name:
      self._fail(400, 'upload without a name')
      return
    if_generation = int(query['ifGenerationMatch']) if 'ifGenerationMatch' in query else None
    if kind == 'resumable':
      upload_id = self.fake.start_upload(bucket, name, if_generation)
      scheme = 'https' if self.tls else 'http'
      host = self.headers.get('Host') or f'127.0.0.1:{self.fake.port}'
      location = (f'{scheme}://{host}/upload/storage/v1/b/{bucket}/o?uploadType=resumable'
                  f'&upload_id={upload_id}')
      self._send(200, b'', {'Location': location})
      return
    if kind != 'media':
      self._fail(501, f'uploadType={kind}')
      return
    self._stored(bucket, name, self.fake.put(bucket, name, body, self._client(), if_generation))

  def _stored(self, bucket: str, name: str, blob: Optional[Blob]) -> None:
    """The stored object's resource, or 412 when its precondition refused the write."""
    if blob is None:
      self._refused()
    else:
      self._json(200, resource(bucket, name, blob))

  def _resume(self, upload_id: str, body: bytes) -> None:
    session = self.fake.uploads.get(upload_id)
    if session is None:
      self._json(404, {'error': {'code': 404, 'message': f'No upload {upload_id}'}})
      return
    match = re.fullmatch(r'bytes (\*|(\d+)-(\d+))/(\*|\d+)',
                         self.headers.get('Content-Range', f'bytes */{len(body)}').strip())
    if not match:
      self._fail(400, f'Content-Range {self.headers.get("Content-Range")!r}')
      return
    if match.group(2) is not None:
      first = int(match.group(2))
      session['data'] = session['data'][:first] + body
    total = match.group(4)
    if total != '*' and len(session['data']) == int(total):
      self._stored(session['bucket'], session['name'], self.fake.put(
          session['bucket'], session['name'], session['data'], self._client(),
          session['if_generation']))
      return
    headers = {'Range': f'bytes=0-{len(session["data"]) - 1}'} if session['data'] else {}
    self._send(308, b'', headers)

  def _delete(self, bucket: str, name: str, query: Dict[str, str]) -> None:
    deleted = self.fake.delete(bucket, name, int(query['ifGenerationMatch'])
                               if 'ifGenerationMatch' in query else None)
    if deleted is None:
      self._refused()
    elif not deleted:
      self._missing(bucket, name)
    else:
      self._send(204)

  def _copy(self, bucket: str, name: str, to_bucket: str, to_name: str) -> None:
    blob = self.fake.get(bucket, name)
    if blob is None:
      self._missing(bucket, name)
      return
    copy = self.fake.put(to_bucket, to_name, blob.data, blob.writer)
    copied = resource(to_bucket, to_name, copy)
    size = str(len(blob.data))
    self._json(200, {'kind': 'storage#rewriteResponse', 'done': True, 'resource': copied,
                     'totalBytesRewritten': size, 'objectSize': size})


def _unquote(name: str) -> str:
  return urllib.parse.unquote(name)


def _range(header: Optional[str], size: int):
  """(first, last) byte of a `Range: bytes=...` header, None for the whole object, or
  'unsatisfiable'."""
  if not header:
    return None
  match = re.fullmatch(r'bytes=(\d*)-(\d*)', header.strip())
  if not match or not (match.group(1) or match.group(2)):
    return None
  if not match.group(1):  # the last N bytes
    first, last = max(size - int(match.group(2)), 0), size - 1
  else:
    first = int(match.group(1))
    last = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
  if first >= size:
    return 'unsatisfiable'
  return first, last

