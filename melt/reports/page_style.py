"""The incident page's stylesheet, inlined in each page so a page is one file plus ``plotly.min.js``."""

CSS = """
:root { --fg:#1f2933; --muted:#6b7280; --line:#e5e7eb; --bg:#f8fafc; --accent:#1d4ed8; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.5 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif; color:var(--fg); background:var(--bg); }
main { max-width:1240px; margin:0 auto; padding:16px 24px 48px; }
header.top { display:flex; align-items:baseline; gap:16px; flex-wrap:wrap; margin-bottom:8px; }
header.top h1 { font-size:22px; margin:0; }
a { color:var(--accent); text-decoration:none; } a:hover { text-decoration:underline; }
.muted { color:var(--muted); }
section { background:white; border:1px solid var(--line); border-radius:8px; padding:14px 18px; margin:14px 0; }
section h2 { font-size:16px; margin:0 0 10px; }
section h3 { font-size:14px; margin:14px 0 6px; }
.sev { display:inline-block; padding:1px 9px; border-radius:10px; color:white; font-size:12px; font-weight:600; }
.sev-low { background:#6b8e23; } .sev-medium { background:#d4a017; } .sev-high { background:#e07b00; }
.sev-critical { background:#c62828; }
.facts { display:grid; grid-template-columns:repeat(auto-fit,minmax(220px,1fr)); gap:6px 18px; margin:0; }
.facts div { min-width:0; } .facts dt { color:var(--muted); font-size:12px; } .facts dd { margin:0; overflow-wrap:anywhere; }
.explanation { font-size:15px; margin:0 0 8px; }
table { border-collapse:collapse; width:100%; font-size:13px; }
th, td { text-align:left; padding:5px 8px; border-bottom:1px solid var(--line); vertical-align:top; }
th { color:var(--muted); font-weight:600; background:#f9fafb; }
td.num { text-align:right; font-variant-numeric:tabular-nums; }
td.id { white-space:nowrap; }
td.wrap { overflow-wrap:break-word; max-width:420px; }
tr:target { background:#fef9c3; }
.path { font-family:ui-monospace,SFMono-Regular,Menlo,monospace; font-size:12px; }
.path .hop { color:#b91c1c; font-weight:600; }
.grid2 { display:grid; grid-template-columns:repeat(auto-fit,minmax(520px,1fr)); gap:10px; }
.chart { width:100%; min-height:220px; }
.template { font-family:ui-monospace,SFMono-Regular,Menlo,monospace; font-size:12.5px; background:#eef2ff;
            padding:4px 8px; border-radius:4px; overflow-wrap:anywhere; }
pre.lines { margin:4px 0 12px; padding:6px 8px; background:#0f172a; color:#e2e8f0; border-radius:4px;
            font-size:12px; white-space:pre-wrap; overflow-wrap:anywhere; }
.lvl-ERROR, .lvl-FATAL { color:#fca5a5; } .lvl-WARN { color:#fde68a; }
.nojs { display:none; color:#b91c1c; }
footer { color:var(--muted); font-size:12px; margin-top:20px; }
"""
