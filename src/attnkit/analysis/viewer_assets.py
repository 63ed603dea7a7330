"""The viewer's inline CSS and JavaScript (see :mod:`attnkit.analysis.viewer`)."""

CSS = """body{font-family:system-ui,sans-serif;margin:14px 20px;color:#222;font-size:14px}
header h1{font-size:19px;margin:0 0 2px}.sub{color:#555;font-size:13px}
details#text{margin:4px 0 6px;font-size:13px;max-width:1100px}details#text summary{cursor:pointer;
color:#333}.full{max-height:8em;overflow:auto;background:#f6f6f6;padding:4px 6px;white-space:pre-wrap}
#notes{margin:4px 0 8px;padding-left:18px;font-size:13px;color:#8a4b00}#notes:empty{display:none}
#controls{margin:6px 0}#controls label{margin-right:10px}.hint{color:#888;font-size:12px}
#about{color:#555;font-size:13px;margin-bottom:6px}
#main{display:flex;align-items:flex-start;gap:24px}
#mapwrap{overflow-x:auto;max-width:940px;flex:none}#mapbox{display:grid;grid-template-columns:auto auto;grid-template-rows:auto auto;flex:none}
#collabels,#rowlabels,#cells{position:relative}
.lab{position:absolute;white-space:nowrap;color:#222;background:#eef2f8;border-radius:3px;
cursor:pointer;overflow:visible;box-sizing:border-box}
.col{bottom:2px;writing-mode:vertical-rl;transform:rotate(180deg);text-align:left;padding:3px 0}
.row{right:3px;text-align:right;padding:0 4px}
.lab.hl{background:#ffd24d}.lab.sel{background:#ff9f1c;color:#000}
#heatmap{display:block;image-rendering:pixelated;outline:1px solid #999}
#overlay{position:absolute;left:0;top:0;pointer-events:none}
#legend{margin-bottom:10px}#legendticks{position:relative;height:14px;width:220px;font-size:11px}
#legendticks span{position:absolute;transform:translateX(-50%)}#legendticks span:first-child{transform:none}
#legendticks span:last-child{transform:translateX(-100%)}.cap{font-size:12px;color:#555}
#headinfo{font-size:13px;margin:6px 0}#headsbox{max-height:330px;overflow-y:auto;display:inline-block}#heads,#ranking table{border-collapse:collapse;font-size:12px}
#heads td,#heads th,#ranking td,#ranking th{padding:1px 6px;text-align:right;border-bottom:1px solid #eee}
#heads tr.cur,#ranking tr.cur{background:#ffe9a8}#heads tr[data-h],#ranking tr[data-l]{cursor:pointer}
#ranking{margin-top:12px;max-width:560px}#ranking p{font-size:12px;color:#555;margin:2px 0}
#strip{max-width:1100px;line-height:1.9}#striptitle{font-size:14px;margin:14px 0 2px}
.tok{display:inline-block;padding:0 4px;margin:1px;border:1px solid #ddd;border-radius:3px}
#overviewbox{overflow:auto;max-width:100%}#overview{cursor:pointer}
#tip{position:fixed;pointer-events:none;background:#222;color:#fff;padding:3px 7px;
border-radius:3px;font-size:12px;display:none;z-index:5;white-space:nowrap}
#imagebox{position:relative;margin-bottom:10px}#imagebox img{image-rendering:pixelated;display:block}
#imagebox canvas{position:absolute;left:0;top:0;cursor:crosshair}#selftest{display:none}
h3{font-size:15px}"""

JS = r"""
const D = JSON.parse(document.getElementById('data').textContent);
const $ = id => document.getElementById(id);
const STOPS = [[68,1,84],[71,44,122],[59,81,139],[44,113,142],[33,144,141],[39,173,129],
               [92,200,99],[170,220,50],[253,231,37]];
const LUT = new Uint8Array(768);
for (let i = 0; i < 256; i++) {
  const x = i / 255 * 8, a = Math.min(7, Math.floor(x)), f = x - a;
  for (let c = 0; c < 3; c++) LUT[3 * i + c] = Math.round(STOPS[a][c] * (1 - f) + STOPS[a + 1][c] * f);
}
function unb64(s) { const b = atob(s), a = new Uint8Array(b.length);
  for (let i = 0; i < b.length; i++) a[i] = b.charCodeAt(i); return a; }
D.views.forEach(v => { v.bytes = unb64(v.maps); v.maps = null; v.thumbs = null;
  v.rm = new Float32Array(unb64(v.rmax).buffer); v.rmax = null; });
if (D.image) D.image.bytes = unb64(D.image.rows);
const S = {v: 0, l: 0, h: 0, q: -1, scale: null};   // scale null: the view's default
const scaleOf = v => S.scale || (v.causal ? 'row' : 'head');
function rowMax(v, l, h, i) { return v.rm[(l * v.H + h) * v.rq + i]; }
function weight(v, l, h, i, j) { return headMap(v, l, h)[i * v.rk + j] / 255 * rowMax(v, l, h, i); }
const V = () => D.views[S.v];
const fmt = x => x === null || x === undefined ? '–' : (+x).toFixed(2);
function headMap(v, l, h) { const n = v.rq * v.rk, o = (l * v.H + h) * n; return v.bytes.subarray(o, o + n); }
function cellSize(v) {   // square cells; flat maps (few rows) keep rows >= 8 px and scroll
  const c = Math.max(3, Math.min(32, Math.floor(720 / Math.max(v.rq, v.rk))));
  return v.rq <= 24 ? Math.max(c, 10) : c;
}
function span(labels, i, f, n) {   // the tokens one display cell stands for
  if (f === 1) return {text: labels[i], a: i, b: i};
  const a = i * f, b = Math.min(n, a + f) - 1;
  return {text: labels[a] + '…' + labels[b], a: a, b: b};
}
function short(s, n) { return s.length > n ? s.slice(0, n - 1) + '…' : s; }
function fill(sel, n, name) { sel.innerHTML = ''; for (let i = 0; i < n; i++) sel.add(new Option(name(i), i)); }

const selV = $('view'), selL = $('layer'), selH = $('head'), selS = $('scale');
fill(selV, D.views.length, i => D.views[i].name + ' (' + D.views[i].Tq + ' x ' + D.views[i].Tk + ')');
if (D.views.length < 2) selV.parentNode.style.display = 'none';

function labels() {
  const v = V(), c = cellSize(v), fs = Math.min(12, Math.max(8, c - 2));
  const step = Math.max(1, Math.ceil((fs + 3) / c));
  const col = $('collabels'), row = $('rowlabels');
  col.innerHTML = ''; row.innerHTML = '';
  let longest = 0;
  for (let j = 0; j < v.rk; j += step) {
    const t = short(span(v.klabels, j, v.fk, v.Tk).text, 16), e = document.createElement('span');
    e.className = 'lab col'; e.textContent = t; e.dataset.j = j; e.title = 'key ' + (j * v.fk);
    e.style.left = (j * c) + 'px'; e.style.width = c + 'px'; e.style.lineHeight = c + 'px';
    e.style.fontSize = fs + 'px'; col.appendChild(e); longest = Math.max(longest, t.length);
  }
  for (let i = 0; i < v.rq; i += step) {
    const t = short(span(v.qlabels, i, v.fq, v.Tq).text, 16), e = document.createElement('span');
    e.className = 'lab row'; e.textContent = t; e.dataset.i = i; e.title = 'query ' + (i * v.fq);
    e.style.top = (i * c) + 'px'; e.style.height = c + 'px'; e.style.lineHeight = c + 'px';
    e.style.fontSize = fs + 'px'; e.onclick = () => pick(i); row.appendChild(e);
  }
  const lh = Math.min(130, Math.round(longest * fs * 0.62) + 10);
  col.style.width = (v.rk * c) + 'px'; col.style.height = lh + 'px';
  let rw = 0; row.childNodes.forEach(e => rw = Math.max(rw, e.textContent.length));
  row.style.width = Math.min(150, Math.round(rw * fs * 0.62) + 14) + 'px';
  row.style.height = (v.rq * c) + 'px';
}

function draw() {
  const v = V(), c = cellSize(v), m = headMap(v, S.l, S.h), mx = v.max[S.l][S.h], sc = scaleOf(v);
  const cv = $('heatmap'), ov = $('overlay'), dpr = window.devicePixelRatio || 1;
  const img = new ImageData(v.rk, v.rq);
  for (let i = 0; i < m.length; i++) {
    const rm = v.rm[(S.l * v.H + S.h) * v.rq + Math.floor(i / v.rk)];
    let x = m[i]; if (sc === 'abs') x = Math.min(255, Math.round(x * rm));
    else if (sc === 'head') x = mx > 0 ? Math.min(255, Math.round(x * rm / mx)) : 0;
    img.data[4 * i] = LUT[3 * x]; img.data[4 * i + 1] = LUT[3 * x + 1];
    img.data[4 * i + 2] = LUT[3 * x + 2]; img.data[4 * i + 3] = 255;
  }
  const off = document.createElement('canvas'); off.width = v.rk; off.height = v.rq;
  off.getContext('2d').putImageData(img, 0, 0);
  for (const e of [cv, ov]) { e.width = v.rk * c * dpr; e.height = v.rq * c * dpr;
    e.style.width = (v.rk * c) + 'px'; e.style.height = (v.rq * c) + 'px'; }
  const ctx = cv.getContext('2d'); ctx.imageSmoothingEnabled = false;
  ctx.drawImage(off, 0, 0, cv.width, cv.height);
  legend(sc === 'abs' ? 1 : sc === 'head' ? mx : null); selS.value = sc;
  marks(-1, -1);
  selL.value = S.l; selH.value = S.h; selV.value = S.v;
  $('about').textContent = v.about + (v.causal ? ' · causal' : '') + ' · layer ' + v.layers[S.l] +
    ', head ' + S.h + ' · cells ' + c + ' px' + (v.fq > 1 || v.fk > 1 ? ' · downsampled (see notes)' : '');
  headinfo(); ranking(); strip(); image(); overview();
  history.replaceState(null, '', '#view=' + v.name + '&layer=' + v.layers[S.l] + '&head=' + S.h +
                       (S.q >= 0 ? '&q=' + S.q : ''));
}

function legend(top) {
  const cv = $('legendbar'), ctx = cv.getContext('2d');
  for (let x = 0; x < cv.width; x++) {
    const i = Math.round(x / (cv.width - 1) * 255);
    ctx.fillStyle = 'rgb(' + LUT[3 * i] + ',' + LUT[3 * i + 1] + ',' + LUT[3 * i + 2] + ')';
    ctx.fillRect(x, 0, 1, cv.height);
  }
  $('legendticks').innerHTML = [0, 0.5, 1].map(f => '<span style="left:' + (f * 220) + 'px">' +
    (top === null ? ['0', '½', 'row max'][2 * f] : (f * top).toPrecision(2)) + '</span>').join('');
  document.querySelector('#legend .cap').textContent = 'attention weight' +
    (top === null ? ' (each row scaled to its own largest weight)' : '');
}

function marks(i, j) {   // hover crosshair and the picked row
  const v = V(), c = cellSize(v), ov = $('overlay'), dpr = window.devicePixelRatio || 1;
  const ctx = ov.getContext('2d'); ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, ov.width, ov.height);
  if (S.q >= 0 && S.q < v.rq) { ctx.strokeStyle = '#ff9f1c'; ctx.lineWidth = 2;
    ctx.strokeRect(1, S.q * c + 1, v.rk * c - 2, c - 2); }
  if (i >= 0) { ctx.strokeStyle = 'rgba(255,255,255,0.9)'; ctx.lineWidth = 1;
    ctx.strokeRect(0.5, i * c + 0.5, v.rk * c - 1, c - 1); ctx.strokeRect(j * c + 0.5, 0.5, c - 1, v.rq * c - 1); }
  document.querySelectorAll('.lab.hl').forEach(e => e.classList.remove('hl'));
  document.querySelectorAll('.lab.sel').forEach(e => e.classList.remove('sel'));
  const r = document.querySelector('.row[data-i="' + i + '"]'), k = document.querySelector('.col[data-j="' + j + '"]');
  if (r) r.classList.add('hl'); if (k) k.classList.add('hl');
  const s = document.querySelector('.row[data-i="' + S.q + '"]'); if (s) s.classList.add('sel');
}

const cells = $('cells'), tip = $('tip');
cells.onmousemove = ev => {
  const v = V(), c = cellSize(v), r = $('heatmap').getBoundingClientRect();
  const j = Math.floor((ev.clientX - r.left) / c), i = Math.floor((ev.clientY - r.top) / c);
  if (i < 0 || j < 0 || i >= v.rq || j >= v.rk) { tip.style.display = 'none'; return; }
  const w = weight(v, S.l, S.h, i, j);
  const q = span(v.qlabels, i, v.fq, v.Tq), k = span(v.klabels, j, v.fk, v.Tk);
  const qs = q.a === q.b ? '#' + q.a : '#' + q.a + '–' + q.b, ks = k.a === k.b ? '#' + k.a : '#' + k.a + '–' + k.b;
  tip.textContent = 'query ' + qs + ' "' + short(q.text, 30) + '" → key ' + ks + ' "' +
    short(k.text, 30) + '": ' + w.toFixed(3);
  tip.style.display = 'block'; tip.style.left = (ev.clientX + 14) + 'px'; tip.style.top = (ev.clientY + 12) + 'px';
  marks(i, j);
};
cells.onmouseleave = () => { tip.style.display = 'none'; marks(-1, -1); };
cells.onclick = ev => { const v = V(), c = cellSize(v), r = $('heatmap').getBoundingClientRect();
  const i = Math.floor((ev.clientY - r.top) / c); if (i >= 0 && i < v.rq) pick(i); };
function pick(i) { S.q = i; draw(); }

function headinfo() {
  const v = V(), t = $('heads');
  if (!v.types) { $('headinfo').textContent = ''; t.innerHTML = ''; return; }
  const r = v.types[S.l * v.H + S.h];
  $('headinfo').innerHTML = '<b>layer ' + v.layers[S.l] + ' head ' + S.h + '</b>: type <b>' +
    (r[6] || 'unclassified') + '</b> · ' + D.types.map((n, k) => n + ' ' + fmt(r[k + 1])).join(' · ');
  let s = '<tr><th>head</th>' + D.types.map(n => '<th>' + n + '</th>').join('') + '<th>type</th></tr>';
  for (let h = 0; h < v.H; h++) { const x = v.types[S.l * v.H + h];
    s += '<tr data-h="' + h + '"' + (h === S.h ? ' class="cur"' : '') + '><td>' + h + '</td>' +
      D.types.map((n, k) => '<td>' + fmt(x[k + 1]) + '</td>').join('') + '<td>' + (x[6] || '–') + '</td></tr>'; }
  t.innerHTML = s;
  t.querySelectorAll('tr[data-h]').forEach(e => e.onclick = () => { S.h = +e.dataset.h; draw(); });
}

function ranking() {
  const R = D.ranking, box = $('ranking');
  if (!R) { box.innerHTML = ''; return; }
  const vs = R.versus ? '<th>' + R.from + '→' + R.versus + '</th>' : '';
  let s = '<p><b>Heads ranked by contrast</b>: how much more "' + R.from + '" attends to "' + R.to +
    '" than the other words do (contrast = weight − others\' mean; ratio = weight / others\' mean).</p>' +
    '<table><tr><th>#</th><th>layer</th><th>head</th><th>' + R.from + '→' + R.to + '</th><th>others</th>' +
    '<th>contrast</th><th>ratio</th>' + vs + '<th>type</th></tr>';
  R.rows.forEach((r, n) => { const cur = D.views[R.view].layers[S.l] === r.layer && S.h === r.head && S.v === R.view;
    s += '<tr data-l="' + r.layer + '" data-h="' + r.head + '"' + (cur ? ' class="cur"' : '') + '><td>' + (n + 1) +
      '</td><td>' + r.layer + '</td><td>' + r.head + '</td><td>' + r.weight.toFixed(3) + '</td><td>' +
      r.others.toFixed(3) + '</td><td>' + r.contrast.toFixed(3) + '</td><td>' + (r.ratio === null ? '–' : (+r.ratio).toFixed(2)) +
      '</td>' + (R.versus ? '<td>' + r.versus_weight.toFixed(3) + '</td>' : '') + '<td>' + (r.type || '–') + '</td></tr>'; });
  box.innerHTML = s + '</table>';
  box.querySelectorAll('tr[data-l]').forEach(e => e.onclick = () => {
    S.v = R.view; S.l = D.views[R.view].layers.indexOf(+e.dataset.l); S.h = +e.dataset.h; setup(); });
}

function strip() {
  const v = V(), box = $('strip'), title = $('striptitle');
  if (v.fk > 1) { title.textContent = 'Key tokens: not shown (the view is downsampled)'; box.innerHTML = ''; return; }
  const m = headMap(v, S.l, S.h), rowmax = S.q >= 0 ? rowMax(v, S.l, S.h, S.q) : 0;
  title.textContent = S.q < 0 ? 'Key tokens (click a row label or a cell to colour them by that query\'s weights)' :
    'Where query #' + S.q + ' "' + span(v.qlabels, S.q, v.fq, v.Tq).text + '" attends (darker = more; its largest weight ' +
    rowmax.toFixed(3) + ')';
  box.innerHTML = '';
  v.klabels.forEach((t, j) => { const e = document.createElement('span'); e.className = 'tok'; e.textContent = t;
    if (S.q >= 0 && rowmax > 0) { const a = m[S.q * v.rk + j] / 255;
      e.style.background = 'rgba(255,140,0,' + a.toFixed(3) + ')';
      e.title = (a * rowmax).toFixed(3); }
    box.appendChild(e); });
}

function image() {
  const box = $('imagebox'), I = D.image;
  if (!I || I.view !== S.v) { box.innerHTML = ''; return; }
  const v = V(), [gh, gw] = I.grid;
  if (!box.firstChild) { const im = new Image(); im.src = 'data:image/png;base64,' + I.png;
    const cv = document.createElement('canvas'); box.appendChild(im); box.appendChild(cv);
    const cap = document.createElement('div'); cap.className = 'cap'; box.appendChild(cap);
    im.onload = () => image();
    cv.onclick = ev => { const r = cv.getBoundingClientRect();
      const pr = Math.floor((ev.clientY - r.top) / r.height * gh), pc = Math.floor((ev.clientX - r.left) / r.width * gw);
      if (V().fq === 1) pick(I.first + pr * gw + pc); }; }
  const im = box.children[0], cv = box.children[1], cap = box.children[2];
  const side = 260; im.style.width = side + 'px'; im.style.height = Math.round(side * gh / gw) + 'px';
  cv.width = gw; cv.height = gh; cv.style.width = im.style.width; cv.style.height = im.style.height;
  let row, q = S.q, scale;
  if (q < 0 || v.fk > 1 || v.fq > 1) { q = 0; const n = v.Tk, o = (S.l * v.H + S.h) * I.first * n;
    row = I.bytes.subarray(o, o + n); scale = I.rowmax[(S.l * v.H + S.h) * I.first]; }
  else { row = headMap(v, S.l, S.h).subarray(q * v.rk, (q + 1) * v.rk); scale = rowMax(v, S.l, S.h, q); }
  let mx = 0; for (let k = 0; k < gh * gw; k++) mx = Math.max(mx, row[I.first + k]);
  const img = new ImageData(gw, gh);
  for (let k = 0; k < gh * gw; k++) { const x = mx ? Math.round(row[I.first + k] / mx * 255) : 0;
    img.data.set([LUT[3 * x], LUT[3 * x + 1], LUT[3 * x + 2], Math.round(40 + 130 * x / 255)], 4 * k); }
  cv.getContext('2d').putImageData(img, 0, 0); cv.style.imageRendering = 'pixelated';
  cap.textContent = 'patch map: where ' + (q === 0 ? v.qlabels[0] : 'token #' + q + ' (' + v.qlabels[q] + ')') +
    ' attends over the ' + gh + 'x' + gw + ' patches (colour: 0 .. its largest patch weight, ' +
    (mx / 255 * scale).toFixed(3) + '; click a patch to pick it)';
}

function overview() {
  const v = V(), cv = $('overview');
  const t = Math.max(4, Math.min(28, Math.floor(900 / v.H) - 1, Math.floor(1100 / v.L) - 1)), g = 1, ml = 34, mt = 16;
  if (!v.thumbs) {   // block means of every head at t x t, each scaled to its maximum
    v.thumbs = document.createElement('canvas'); v.thumbs.width = ml + v.H * (t + g); v.thumbs.height = mt + v.L * (t + g);
    const ctx = v.thumbs.getContext('2d'); ctx.fillStyle = '#fff'; ctx.fillRect(0, 0, v.thumbs.width, v.thumbs.height);
    ctx.fillStyle = '#333'; ctx.font = '10px sans-serif';
    const ls = Math.ceil(12 / (t + g)), hs = Math.ceil(22 / (t + g));
    for (let l = 0; l < v.L; l += ls) ctx.fillText('L' + v.layers[l], 2, mt + l * (t + g) + Math.min(t, 10));
    for (let h = 0; h < v.H; h += hs) ctx.fillText(h, ml + h * (t + g), 11);
    const img = new ImageData(t, t), val = new Float32Array(t * t);
    const r0 = [], r1 = [], c0 = [], c1 = [];   // the source block of each thumbnail pixel
    for (let a = 0; a < t; a++) { r0.push(Math.floor(a * v.rq / t)); r1.push(Math.max(r0[a] + 1, Math.floor((a + 1) * v.rq / t)));
      c0.push(Math.floor(a * v.rk / t)); c1.push(Math.max(c0[a] + 1, Math.floor((a + 1) * v.rk / t))); }
    for (let l = 0; l < v.L; l++) for (let h = 0; h < v.H; h++) {
      const m = headMap(v, l, h); let mx = 0;
      for (let a = 0; a < t; a++) for (let b = 0; b < t; b++) { let s = 0;
        for (let i = r0[a]; i < r1[a]; i++) { const rm = rowMax(v, l, h, i);
          for (let j = c0[b]; j < c1[b]; j++) s += m[i * v.rk + j] * rm; }
        const x = s / ((r1[a] - r0[a]) * (c1[b] - c0[b])); val[a * t + b] = x; mx = Math.max(mx, x); }
      for (let k = 0; k < t * t; k++) { const x = Math.round(val[k] / (mx || 1) * 255);
        img.data[4 * k] = LUT[3 * x]; img.data[4 * k + 1] = LUT[3 * x + 1]; img.data[4 * k + 2] = LUT[3 * x + 2]; img.data[4 * k + 3] = 255; }
      ctx.putImageData(img, ml + h * (t + g), mt + l * (t + g));
    }
  }
  cv.width = v.thumbs.width; cv.height = v.thumbs.height;
  const ctx = cv.getContext('2d'); ctx.drawImage(v.thumbs, 0, 0);
  ctx.strokeStyle = '#ff3b30'; ctx.lineWidth = 2; ctx.strokeRect(ml + S.h * (t + g) - 1, mt + S.l * (t + g) - 1, t + 2, t + 2);
  cv.onclick = ev => { const r = cv.getBoundingClientRect();
    const h = Math.floor((ev.clientX - r.left - ml) / (t + g)), l = Math.floor((ev.clientY - r.top - mt) / (t + g));
    if (h >= 0 && h < v.H && l >= 0 && l < v.L) { S.l = l; S.h = h; draw(); } };
  cv.dataset.thumb = t;
}

function setup() {   // a new view: pickers, labels, then draw
  const v = V();
  fill(selL, v.L, i => 'layer ' + v.layers[i]); fill(selH, v.H, h => 'head ' + h);
  S.l = Math.min(Math.max(S.l, 0), v.L - 1); S.h = Math.min(Math.max(S.h, 0), v.H - 1);
  if (S.q >= v.rq) S.q = -1;
  $('imagebox').innerHTML = '';
  labels(); draw();
}
selV.onchange = () => { S.v = +selV.value; S.q = -1; setup(); };
selL.onchange = () => { S.l = +selL.value; draw(); };
selH.onchange = () => { S.h = +selH.value; draw(); };
selS.onchange = () => { S.scale = selS.value; draw(); };
document.addEventListener('keydown', ev => {
  if (ev.target.tagName === 'SELECT') return;
  const v = V(), d = {ArrowLeft: [0, -1], ArrowRight: [0, 1], ArrowUp: [-1, 0], ArrowDown: [1, 0]}[ev.key];
  if (!d) return; ev.preventDefault();
  S.l = (S.l + d[0] + v.L) % v.L; S.h = (S.h + d[1] + v.H) % v.H; draw();
});
(function init() {
  const p = {}; location.hash.slice(1).split('&').forEach(kv => { const [k, x] = kv.split('='); if (k) p[k] = decodeURIComponent(x || ''); });
  if (p.view) { const i = D.views.findIndex(v => v.name === p.view); if (i >= 0) S.v = i; }
  else if (D.ranking && p.layer !== undefined) S.v = D.ranking.view;
  const o = D.open;   // no URL parameters: open on the answer (top-ranked head, asked query)
  if (o && p.view === undefined && p.layer === undefined && p.head === undefined) {
    S.v = o.view; const w = V(); S.l = Math.max(0, w.layers.indexOf(o.layer)); S.h = o.head;
    if (o.q !== undefined && o.q !== null && p.q === undefined) S.q = Math.floor(o.q / w.fq);
  }
  const v = V();
  if (p.layer !== undefined) { const i = v.layers.indexOf(+p.layer); if (i >= 0) S.l = i; }
  if (p.head !== undefined && +p.head < v.H) S.h = +p.head;
  if (p.q !== undefined && +p.q < v.rq) S.q = +p.q;
  if (['abs', 'row', 'head'].includes(p.scale)) S.scale = p.scale;
  setup();
  if ('selftest' in p) selftest();
})();

function selftest() {   // geometry for the browser test (tests/test_viewer.py)
  const v = V(), c = cellSize(v), r = $('heatmap').getBoundingClientRect();
  let dx = 0, dy = 0, nc = 0, nr = 0;
  document.querySelectorAll('.col').forEach(e => { const b = e.getBoundingClientRect(), j = +e.dataset.j;
    dx = Math.max(dx, Math.abs((b.left + b.right) / 2 - (r.left + (j + 0.5) * c))); nc++; });
  document.querySelectorAll('.row').forEach(e => { const b = e.getBoundingClientRect(), i = +e.dataset.i;
    dy = Math.max(dy, Math.abs((b.top + b.bottom) / 2 - (r.top + (i + 0.5) * c))); nr++; });
  const first = document.querySelector('.col'), fb = first.getBoundingClientRect();
  $('selftest').textContent = JSON.stringify({ok: true, cell: c, width: r.width, height: r.height,
    rq: v.rq, rk: v.rk, dx: dx, dy: dy, ncol: nc, nrow: nr, labels_above: fb.bottom <= r.top + 1,
    thumb: +$('overview').dataset.thumb, overview: [$('overview').width, $('overview').height],
    title_height: document.querySelector('header').getBoundingClientRect().height,
    view: v.name, layer: v.layers[S.l], head: S.h, strip: document.querySelectorAll('.tok').length});
}
"""
