"""`dcase-t6 explore`: error analysis in the browser, query by query (a local server, or a static site)."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import click
from click.core import ParameterSource
from rich.markup import escape

from dcase_t6.cli import json_option, main, matrix_path, print_json, split_named
from dcase_t6.cli.console import console, reporter
from dcase_t6.common.errors import UserError


@main.command()
@click.option("--predictions", "-p", "matrices", multiple=True, metavar="[NAME=]MATRIX",
              help="Similarity matrix (.csv, .npz or RUN:DATASET/SPLIT), optionally named (NAME=...; default: the run "
              "or the file's stem); give a second -p to compare two systems.")
@click.option("--relevance", "-r", type=click.Path(dir_okay=False),
              help="Multi-relevance CSV (query, audio_filenames), e.g. the dev-test metadata_eval.csv.")
@click.option("--captions", "-c", type=click.Path(dir_okay=False),
              help="Clotho captions CSV: each caption is a query whose target is its own clip (also the clips' "
              "captions shown).")
@click.option("--audio", "audio_dir", type=click.Path(file_okay=False),
              help="Folder holding the clips named in the matrix (only those are served); required with -p.")
@click.option("--clip-captions", type=click.Path(dir_okay=False),
              help="Clotho captions CSV whose captions are shown beside each clip (with --relevance).")
@click.option("--top", type=click.IntRange(min=1), default=16, show_default=True,
              help="Clips listed on each query page.")
@click.option("--allow-missing", is_flag=True,
              help="Explore only the ground-truth queries every matrix has, instead of failing.")
@click.option("--html", "html_dir", type=click.Path(file_okay=False),
              help="Write a static site to this folder (pages + audio) instead of serving.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address the server listens on; another than 127.0.0.1 shares the clips with your network.")
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True,
              help="Port of the server; 0 picks a free one (printed).")
@click.option("--open", "open_browser", is_flag=True, help="Open the queries page in the default browser.")
@click.option("--index", "index_dir", type=click.Path(file_okay=False),
              help="Also a search page over this index of your sounds (`dcase-t6 index build`): type a caption, "
                   "listen to the files found. Alone (without -p), only the search page. Needs the server.")
@json_option
@click.pass_context
def explore(ctx, matrices, relevance, captions, audio_dir, clip_captions, top, allow_missing, html_dir, host, port,
            open_browser, index_dir, as_json):
    """Listen to what a system retrieves, query by query, in the browser; compare two systems.

    Pages: the queries (AP@16, R@K, ranks of the relevant clips; worst first; sortable, searchable), each
    query (its top clips with players, scores, relevant ones marked, where the missed ones ranked), each
    clip (its captions, the queries ranking it highest) and a summary (the numbers of `evaluate`, AP
    histogram, R@K curve). Serves on 127.0.0.1 until Ctrl-C, or writes a static site with --html.
    With --index, a search page over your own sounds too (or alone, without -p).

    \b
    Example:
      dcase-t6 explore -p system.csv -r clotho-devtest-relevance-metadata_eval.csv \\
        --audio data/clotho/audio/evaluation --clip-captions data/clotho/clotho_captions_evaluation.csv
      dcase-t6 explore --index sounds-index
      dcase-t6 explore -p old=RUN1:clotho/development-testing -p new=RUN2:clotho/development-testing \\
        -c data/clotho/clotho_captions_evaluation.csv --audio data/clotho/audio/evaluation --html explore-site
    """
    from dcase_t6.explore.analysis import SystemSource
    from dcase_t6.explore.analysis import clip_captions as captions_by_clip
    from dcase_t6.explore.analysis import explore as run_explore
    from dcase_t6.explore.audio import scan_audio
    from dcase_t6.explore.pages import Site
    from dcase_t6.explore.site import check_target
    from dcase_t6.retrieval.ground_truth import check_ground_truth_options, read_captions_file, read_ground_truth
    from dcase_t6.retrieval.matrices import read_matrix

    started = time.perf_counter()
    if index_dir and html_dir:
        raise UserError("explore: --index needs the server (its search page asks it), which --html does not start; "
                        "leave out --html to serve, or --index to write the site")
    if not matrices:
        given = [option for option, value in (("--relevance", relevance), ("--captions", captions),
                                              ("--audio", audio_dir), ("--clip-captions", clip_captions),
                                              ("--html", html_dir)) if value]
        if not index_dir or given:
            raise UserError("explore: give -p MATRIX (with --audio and --relevance or --captions) to explore a "
                            f"system{', which ' + ', '.join(given) + ' belong to' if given else ''}; or --index INDEX "
                            "alone to search your sounds")
        with _search_box(index_dir, ctx.obj["workdir"], standalone=True) as box:
            _serve(None, host, port, open_browser, as_json, time.perf_counter() - started, box)
        return
    if not audio_dir:
        raise UserError("explore: --audio is required with -p: the folder that holds the clips named in the matrix")
    check_ground_truth_options("explore", relevance, captions)
    if html_dir:
        server_options = [f"--{name}" for name in ("host", "port", "open")
                          if ctx.get_parameter_source(name if name != "open" else "open_browser")
                          == ParameterSource.COMMANDLINE]
        if server_options:
            raise UserError(f"explore: {', '.join(server_options)} set the server, which --html does not start; "
                            "leave out --html to serve, or those options to write the site")
    if len(matrices) > 2:
        raise UserError(f"explore: {len(matrices)} matrices given (-p); pass one, or two to compare them")
    audio = Path(audio_dir)
    if not audio.is_dir():
        raise UserError(f"--audio {audio_dir}: no such folder; pass the folder that holds the clips named in the "
                        "matrix, e.g. data/clotho/audio/evaluation")
    named = [split_named(option, "--predictions") for option in matrices]
    paths = [matrix_path(reference) for _, reference in named]
    if html_dir:
        check_target(html_dir, [*(("--predictions", path) for path in paths), ("--relevance", relevance),
                                ("--captions", captions), ("--clip-captions", clip_captions), ("--audio", audio_dir)],
                     protected=[("work directory", ctx.obj["workdir"])])
    sources = [SystemSource(name, read_matrix(path), reference)
               for name, path, (_, reference) in zip(_names(named), paths, named)]
    truth = read_ground_truth("explore", relevance, captions)
    shown_captions = {}
    if clip_captions:
        shown_captions = captions_by_clip(read_captions_file(clip_captions))
    elif captions:
        shown_captions = captions_by_clip(truth)
    exploration = run_explore(sources, truth, shown_captions, top=top, allow_missing=allow_missing)
    folder = scan_audio(audio, exploration.clips)
    if folder.missing:
        first = exploration.clips[folder.missing[0]]
        links = (f"; {len(folder.outside)} of them are links leading out of the folder, which explore does not "
                 "follow" if folder.outside else "")
        reporter.warning(f"{len(folder.missing)} of {len(exploration.clips)} clips have no file in {audio} (first "
                         f"{first!r}{links}); their players are left out")
    if html_dir:
        _write(Site(exploration, folder), html_dir, as_json)
        return
    if index_dir:
        with _search_box(index_dir, ctx.obj["workdir"], standalone=False) as box:
            _serve(Site(exploration, folder, searchable=True), host, port, open_browser, as_json,
                   time.perf_counter() - started, box)
        return
    _serve(Site(exploration, folder), host, port, open_browser, as_json, time.perf_counter() - started)


def _names(named: list[tuple[str | None, str]]) -> list[str]:
    """A short name per matrix: the one given, else the run of RUN:DATASET/SPLIT or the file's stem; a repeated
    name gets ' (2)'."""
    names = []
    for given, reference in named:
        run, separator, _ = reference.partition(":")
        name = given or (run if separator and not Path(reference).exists() else Path(reference).stem)
        names.append(name if name not in names else f"{name} ({len(names) + 1})")
    return names


def _write(site, html_dir: str, as_json: bool) -> None:
    from dcase_t6.explore.site import write_site

    report = write_site(site, html_dir)
    if as_json:
        print_json(report.as_json())
        return
    console.print(f"explore: wrote {report.pages} pages and {report.audio_files} audio files in "
                  f"{report.seconds:.1f} s; open {escape(str(report.folder / 'index.html'))}",
                  highlight=False, soft_wrap=True)


@contextlib.contextmanager
def _search_box(index_dir: str, workdir: str, standalone: bool):
    """The search page's back end over ``index_dir``, its model loaded for the block."""
    from dcase_t6.explore.audio import scan_audio
    from dcase_t6.explore.searchbox import FoundClip, SearchBox
    from dcase_t6.search.query import Query, open_searcher

    with open_searcher(index_dir, workdir, reporter) as searcher:
        view = searcher.view
        if not view.entries:
            raise UserError(f"--index {index_dir}: holds no file (every one was left out); rebuild it with "
                            "`dcase-t6 index build`")

        def find(text: str, top: int) -> list[FoundClip]:
            return [FoundClip(hit.row, hit.path, hit.score) for hit in searcher.search(Query(text, top=top)).hits]

        audio = scan_audio(view.manifest.audio, [entry.path for entry in view.entries])
        yield SearchBox(find, audio, f"{len(view.entries)} files · {view.manifest.model.describe()}", standalone)


def _serve(site, host: str, port: int, open_browser: bool, as_json: bool, seconds: float, search=None) -> None:
    from dcase_t6.explore.server import bind

    server = bind(site, host, port, search)
    searching = {} if search is None else {"search": server.url + "search.html", "indexed": len(search.audio.paths)}
    if site is None:
        if as_json:
            print_json({"url": server.url, **searching, "seconds": round(seconds, 3)})
        else:
            console.print(f"explore: search over {len(search.audio.paths)} files, ready in {seconds:.2f} s: "
                          f"[bold]{server.url}[/] (Ctrl-C to stop)", highlight=False, soft_wrap=True)
    elif as_json:
        exploration = site.exploration
        print_json({"url": server.url, "queries": len(exploration.queries), "clips": len(exploration.clips),
                    "systems": [system.name for system in exploration.systems], **searching,
                    "seconds": round(seconds, 3)})
    else:
        exploration = site.exploration
        console.print(f"explore: {len(exploration.queries)} queries x {len(exploration.clips)} clips, "
                      f"{' vs '.join(escape(system.name) for system in exploration.systems)}, ready in "
                      f"{seconds:.2f} s: [bold]{server.url}[/] (Ctrl-C to stop)", highlight=False, soft_wrap=True)
    if host not in ("127.0.0.1", "localhost", "::1"):
        reporter.warning(f"listening on {host}: anyone who reaches this address can open the pages and the clips")
    if open_browser:
        click.launch(server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        if not as_json:
            console.print("explore: stopped")
