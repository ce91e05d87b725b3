"""`anbench report`: results -> paper-style tables and figures.

Reports read the runner's long results table only; they never load a model, so they run anywhere
in seconds. Each registered report (a module in `reports/`) turns a `ReportContext` into tables and
figure specs; this package reads and checks the results (`results`), orders and colours methods
(`order`), labels rows (`labels`), tells text from image rows (`modality`), aggregates over seeds
and cells (`stats`, where the one aggregation rule is written down; `corruption` for the mCE),
renders Markdown / LaTeX (booktabs) / CSV tables (`tables`) and PNG / PDF figures (`figures`),
lists gaps (`missing`), and writes everything plus `index.md` (`build`, `index`).
"""

from anbench.reporting.build import (
    FIGURE_FORMATS,
    TABLE_FORMATS,
    build_report,
    build_report_info,
    parse_formats,
    registered_reports,
    settings_of,
)
from anbench.reporting.contract import Report, ReportContext, ReportResult
from anbench.reporting.figures import (
    FigureSpec,
    figure_legend,
    grouped_bars,
    plot_style,
    render_figure,
    save_figure,
    zoom_percent,
)
from anbench.reporting.index import BuildResult, ReportOutcome, render_index
from anbench.reporting.labels import (
    CLEAN,
    DEFAULT_TRAIN_NOISE,
    MISSING_CELL,
    ZEROSHOT,
    add_perturbation_labels,
    assign_labels,
    fmt_num,
    order_perturbations,
    slug,
)
from anbench.reporting.missing import describe_missing
from anbench.reporting.modality import (
    IMAGE,
    MODALITY,
    TEXT,
    metric_info,
    modalities,
    of_modality,
    order_by_category,
)
from anbench.reporting.order import (
    NOISE_ORDER,
    Palette,
    dataset_sort_key,
    label_sort_key,
    make_palette,
    method_colours,
    method_order,
    method_sort_key,
    natural_key,
    noise_sort_key,
    order_datasets,
    order_labels,
    order_methods,
    order_noises,
    split_label,
)
from anbench.reporting.results import read_results, validate_results
from anbench.reporting.stats import (
    BaseNew,
    Stat,
    base_new,
    fmean,
    fstd,
    make_stat,
    reduce_cells,
    summarise,
)
from anbench.reporting.tables import (
    BASE_NEW_COLUMNS,
    Column,
    Row,
    Table,
    base_new_rows,
    format_stat,
    tex_escape,
)
from anbench.results_schema import RESULT_COLUMNS

__all__ = [
    "BASE_NEW_COLUMNS", "CLEAN", "DEFAULT_TRAIN_NOISE", "FIGURE_FORMATS", "IMAGE", "MISSING_CELL",
    "MODALITY", "NOISE_ORDER", "RESULT_COLUMNS", "TABLE_FORMATS", "TEXT", "ZEROSHOT", "BaseNew",
    "BuildResult",
    "Column", "FigureSpec", "Palette", "Report", "ReportContext", "ReportOutcome", "ReportResult",
    "Row", "Stat", "Table", "add_perturbation_labels", "assign_labels", "base_new",
    "base_new_rows", "build_report", "build_report_info", "dataset_sort_key", "describe_missing",
    "figure_legend", "fmean", "fmt_num", "format_stat", "fstd", "grouped_bars", "label_sort_key",
    "make_palette", "make_stat", "method_colours", "method_order", "method_sort_key",
    "metric_info", "modalities", "natural_key", "noise_sort_key", "of_modality",
    "order_by_category", "order_datasets", "order_labels", "order_methods", "order_noises",
    "order_perturbations", "parse_formats", "plot_style", "read_results",
    "reduce_cells", "registered_reports", "render_figure", "render_index", "save_figure",
    "settings_of", "slug", "split_label", "summarise", "tex_escape", "validate_results",
    "zoom_percent",
]
