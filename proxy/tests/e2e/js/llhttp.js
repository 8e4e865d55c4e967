// The second HTTP/1 parser of hostile.rs's differential test: Node's
// llhttp in its strict mode (what Node's HTTP server runs by default).
// Reads a JSON array of hex-encoded requests on stdin; prints, per request,
// the messages llhttp parsed (method, target, version, headers, body
// bytes, complete) and its error code, if any.
const { HTTPParser, methods } = require('_http_common');
const input = JSON.parse(require('fs').readFileSync(0, 'utf8'));
const out = input.map((hex) => {
  const bytes = Buffer.from(hex, 'hex');
  const p = new HTTPParser();
  p.initialize(HTTPParser.REQUEST, {});
  const messages = [];
  let cur = null;
  p[HTTPParser.kOnHeadersComplete] = (major, minor, headers, method, url) => {
    const list = [];
    for (let i = 0; i < headers.length; i += 2) list.push([headers[i].toLowerCase(), headers[i + 1]]);
    cur = { method: methods[method], target: url, version: `${major}.${minor}`, headers: list, body: 0, complete: false };
    messages.push(cur);
    return 0;
  };
  p[HTTPParser.kOnBody] = (b) => { if (cur) cur.body += b.length; };
  p[HTTPParser.kOnMessageComplete] = () => { if (cur) cur.complete = true; };
  p[HTTPParser.kOnExecute] = () => {};
  const r = p.execute(bytes);
  const error = r instanceof Error ? (r.code || String(r)) : null;
  return { messages, error };
});
process.stdout.write(JSON.stringify(out));
