"""An offline, self-contained HTML view of an attribution graph (no CDN; works from file://).

Nodes sit by layer (rows: embeddings at the bottom, then each layer, logits on top) and
position (columns, one per prompt token); edges are coloured by sign (blue +, red -) and
drawn wider and more opaque the larger their weight. Hovering a node shows what it is: its
activation and influence, the feature's top activating contexts and logit effects when given,
and its strongest inputs and outputs; clicking pins it (its edges stay highlighted; click
again to unpin). The page embeds the graph JSON (circuit-tracer's format) it draws.
"""
from __future__ import annotations

import html as _html
import json
from pathlib import Path

_CSS = """
body{font:13px system-ui,sans-serif;margin:0;display:flex;height:100vh;color:#222}
#main{flex:1;overflow:auto;padding:8px}#side{width:360px;border-left:1px solid #ddd;padding:8px;
overflow:auto;background:#fafafa}h1{font-size:16px;margin:4px 0}h2{font-size:13px;margin:10px 0 4px}
.meta{color:#555;margin-bottom:6px}svg{background:#fff}.node{cursor:pointer}
.node.pinned{stroke:#000;stroke-width:2.5}.node.hover{stroke:#f59e0b;stroke-width:2.5}
.edge{pointer-events:none}.dim .edge{opacity:.05!important}.dim .edge.hl{opacity:.95!important}
.tok{font:11px monospace;fill:#333}.lyr{font:11px sans-serif;fill:#777}
.ctx{font:12px monospace;white-space:pre-wrap;margin:2px 0;padding:2px;background:#fff;border:1px solid #eee}
.ctx b{background:#fde68a}table{border-collapse:collapse;font-size:12px}td{padding:1px 6px 1px 0}
.pos{color:#1d4ed8}.neg{color:#b91c1c}.pin{cursor:pointer;text-decoration:underline}
"""

_JS = r"""
(function(){
const data = JSON.parse(document.getElementById('graph-data').textContent);
const feats = JSON.parse(document.getElementById('feature-data').textContent);
const g = data, nodes = g.nodes, links = g.links, meta = g.metadata;
const nL = meta.pyinterp.n_layers, toks = meta.prompt_tokens, T = toks.length;
const byId = {}; nodes.forEach((n,i)=>{n.i=i; n.ins=[]; n.outs=[]; byId[n.node_id]=n;});
links.forEach(l=>{const s=byId[l.source], t=byId[l.target]; if(!s||!t) return; l.s=s; l.t=t; s.outs.push(l); t.ins.push(l);});
function row(n){ if(n.feature_type==='embedding') return 0; if(n.feature_type==='logit') return nL+1; return +n.layer+1; }
const avail = Math.max(600, (window.innerWidth||1200) - 360 - 100);  // side panel, margins, labels
const colW = Math.max(28, Math.min(90, avail/(Math.max(T,1) + 2))), rowH = 80, padL = 60, padB = 60;
const W = padL + colW*T + 2*colW, H = rowH*(nL+2) + padB;
const cells = {}; nodes.forEach(n=>{const k=row(n)+'_'+n.ctx_idx; (cells[k]=cells[k]||[]).push(n);});
Object.values(cells).forEach(list=>{ list.sort((a,b)=>(a.influence??1)-(b.influence??1));
  list.forEach((n,j)=>{ const m=list.length, span=n.feature_type==='logit' ? Math.min(3*colW, 14*m) : Math.min(colW-8, 8*m);
    n.x = padL + colW*n.ctx_idx + colW/2 + (m>1 ? -span/2 + span*j/(m-1) : 0);
    n.y = H - padB - rowH*row(n) - rowH/2 + (m>6 ? ((j%3)-1)*10 : 0); }); });
const NS='http://www.w3.org/2000/svg';
const svg = document.createElementNS(NS,'svg'); svg.setAttribute('width',W); svg.setAttribute('height',H);
svg.id='graph'; document.getElementById('canvas').appendChild(svg);
function el(tag, attrs, parent){ const e=document.createElementNS(NS,tag); for(const k in attrs) e.setAttribute(k,attrs[k]); (parent||svg).appendChild(e); return e; }
for(let r=0;r<nL+2;r++){ const y=H-padB-rowH*r-rowH/2; el('line',{x1:padL,x2:W-10,y1:y,y2:y,stroke:'#f1f1f1'});
  el('text',{x:4,y:y+4,class:'lyr'}).textContent = r===0?'embed':(r===nL+1?'logits':'layer '+(r-1)); }
toks.forEach((t,i)=>{ const x=padL+colW*i+colW/2; const tx=el('text',{x:x,y:H-padB+16,class:'tok','text-anchor':'middle'});
  tx.textContent = t.length>8? t.slice(0,7)+'…' : t; el('text',{x:x,y:H-padB+30,class:'lyr','text-anchor':'middle'}).textContent=i; });
const maxW = Math.max(1e-12, ...links.map(l=>Math.abs(l.weight)));
const gEdges = el('g',{}), gNodes = el('g',{});
links.forEach(l=>{ if(!l.s) return; const a=Math.abs(l.weight)/maxW;
  l.el = el('line',{x1:l.s.x,y1:l.s.y,x2:l.t.x,y2:l.t.y,class:'edge',stroke:l.weight>0?'#2563eb':'#dc2626',
    'stroke-width':(0.4+4*a).toFixed(2),'stroke-opacity':(0.08+0.7*a).toFixed(3)}, gEdges); });
const colour = {'cross layer transcoder':'#7c3aed','mlp reconstruction error':'#9ca3af','embedding':'#10b981','logit':'#f97316'};
nodes.forEach(n=>{ const c=colour[n.feature_type]||'#555'; let e;
  if(n.feature_type==='cross layer transcoder') e=el('circle',{cx:n.x,cy:n.y,r:5,fill:c},gNodes);
  else e=el('rect',{x:n.x-5,y:n.y-5,width:10,height:10,fill:c},gNodes);
  e.setAttribute('class','node'); e.dataset.id=n.node_id; n.el=e;
  e.addEventListener('mouseenter',()=>hover(n)); e.addEventListener('mouseleave',()=>hover(null));
  e.addEventListener('click',()=>togglePin(n)); });
const pinned = new Set(); let hovered = null;
function esc(s){ return String(s).replace(/[&<>"]/g, c=>({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c])); }
function name(n){ if(n.feature_type==='cross layer transcoder') return 'L'+n.layer+' feature '+(n.node_id.split('_')[1])+' @'+n.ctx_idx;
  if(n.feature_type==='mlp reconstruction error') return 'L'+n.layer+' error @'+n.ctx_idx;
  if(n.feature_type==='embedding') return 'embedding "'+toks[n.ctx_idx]+'" @'+n.ctx_idx; return n.clerp; }
function edgeList(list, key){ return list.slice().sort((a,b)=>Math.abs(b.weight)-Math.abs(a.weight)).slice(0,8)
  .map(l=>'<tr><td class="'+(l.weight>0?'pos':'neg')+'">'+l.weight.toFixed(3)+'</td><td>'+esc(name(l[key]))+'</td></tr>').join(''); }
function detail(n){ let h='<h2>'+esc(name(n))+'</h2><table>';
  if(n.activation!==null && n.activation!==undefined) h+='<tr><td>activation</td><td>'+n.activation.toFixed(3)+'</td></tr>';
  if(n.influence!==null && n.influence!==undefined) h+='<tr><td>cumulative influence</td><td>'+n.influence.toFixed(3)+'</td></tr>';
  h+='</table>'; const f=feats[n.node_id];
  if(f){ if(f.label) h+='<p>'+esc(f.label)+'</p>';
    if(f.contexts&&f.contexts.length){ h+='<h2>top activating contexts</h2>';
      f.contexts.forEach(c=>{ h+='<div class="ctx">'+c.tokens.map((t,i)=>i===c.at?'<b>'+esc(t)+'</b>':esc(t)).join('')+
        ' <span class="pos">'+(+c.value).toFixed(2)+'</span></div>'; }); }
    if(f.logits_up) h+='<h2>logit effects</h2><table>'+f.logits_up.map(x=>'<tr><td class="pos">+'+(+x[1]).toFixed(2)+'</td><td>'+esc(x[0])+'</td></tr>').join('')+
      (f.logits_down||[]).map(x=>'<tr><td class="neg">'+(+x[1]).toFixed(2)+'</td><td>'+esc(x[0])+'</td></tr>').join('')+'</table>'; }
  if(n.ins.length) h+='<h2>strongest inputs</h2><table>'+edgeList(n.ins,'s')+'</table>';
  if(n.outs.length) h+='<h2>strongest outputs</h2><table>'+edgeList(n.outs,'t')+'</table>';
  return h; }
function refresh(){ const focus = new Set(pinned); if(hovered) focus.add(hovered);
  svg.classList.toggle('dim', focus.size>0);
  links.forEach(l=>{ if(l.el) l.el.classList.toggle('hl', focus.has(l.s)||focus.has(l.t)); });
  nodes.forEach(n=>{ n.el.classList.toggle('pinned', pinned.has(n)); n.el.classList.toggle('hover', n===hovered); });
  document.getElementById('detail').innerHTML = hovered ? detail(hovered) : (pinned.size? detail([...pinned][pinned.size-1]) : '<p>Hover a node for details; click to pin.</p>');
  document.getElementById('pins').innerHTML = [...pinned].map(n=>'<div class="pin" data-id="'+esc(n.node_id)+'">'+esc(name(n))+'</div>').join('') || '<p>none</p>';
  document.querySelectorAll('#pins .pin').forEach(d=>d.addEventListener('click',()=>togglePin(byId[d.dataset.id]))); }
function hover(n){ hovered=n; refresh(); }
function togglePin(n){ if(pinned.has(n)) pinned.delete(n); else pinned.add(n); refresh(); }
refresh();
})();
"""


def _script_json(obj) -> str:
    # JSON inside <script>: escape what could close the tag or open a comment.
    return json.dumps(obj).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def graph_html(graph_dict: dict, features: dict[str, dict] | None = None,
               title: str | None = None) -> str:
    """The page for a graph in circuit-tracer's JSON form (``Graph.to_dict()``).

    features: node_id -> {"label": str, "contexts": [{"tokens": [str], "at": int, "value": float}],
    "logits_up": [[token, value]], "logits_down": [[token, value]]} for the hover panel."""
    meta = graph_dict["metadata"]
    scores = meta.get("pyinterp", {}).get("scores", {})
    title = title or f"Attribution graph: {meta.get('slug', '')}"
    summary = " · ".join(f"{k} {v:.3f}" for k, v in scores.items() if isinstance(v, float))
    return ("<!doctype html><html><head><meta charset='utf-8'><title>" + _html.escape(title) + "</title><style>"
            + _CSS + "</style></head><body><div id='main'><h1>" + _html.escape(title) + "</h1>"
            "<div class='meta'>prompt: <code>" + _html.escape(meta.get("prompt", "")) + "</code><br>"
            + _html.escape(f"{len(graph_dict['nodes'])} nodes, {len(graph_dict['links'])} edges; {summary}")
            + "</div><div id='canvas'></div></div><div id='side'><h2>details</h2><div id='detail'></div>"
            "<h2>pinned (click to unpin)</h2><div id='pins'></div></div>"
            "<script type='application/json' id='graph-data'>" + _script_json(graph_dict) + "</script>"
            "<script type='application/json' id='feature-data'>" + _script_json(features or {}) + "</script>"
            "<script>" + _JS + "</script></body></html>")


def write_html(graph, path, *, features: dict[str, dict] | None = None, slug: str = "graph",
               title: str | None = None) -> Path:
    """Write ``graph`` (a :class:`~pyinterp.circuits.Graph` or its ``to_dict()``) as one HTML
    file (atomically); returns the path."""
    from pyinterp._files import atomic_write_text

    d = graph if isinstance(graph, dict) else graph.to_dict(slug)
    atomic_write_text(Path(path), graph_html(d, features, title))
    return Path(path)
