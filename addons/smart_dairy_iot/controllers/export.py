from odoo import api, http
from odoo.http import Response, request
from odoo.modules.registry import Registry

MIMETYPES = {
    "csv": "text/csv; charset=utf-8",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
}


class SdExportController(http.Controller):
    @http.route("/smart_dairy_iot/export/<int:wizard_id>", type="http", auth="user", methods=["GET"])
    def export(self, wizard_id):
        """Stream the wizard's file; the user's farm record rules apply as in the views."""
        wizard = request.env["sd.export.wizard"].browse(wizard_id).exists()
        if not wizard:
            raise request.not_found()
        wizard.check_access("read")  # a wizard is readable by its creator only
        wizard._check_export_access()
        filename, file_format = wizard._filename(), wizard.file_format
        dbname, uid, context = request.env.cr.dbname, request.env.uid, dict(request.env.context)

        def stream():
            # The body is produced after this method returns and the request's cursor is closed:
            # the export reads through a cursor of its own, as the same user.
            with Registry(dbname).cursor() as cr:
                env = api.Environment(cr, uid, context)
                yield from env["sd.export.wizard"].browse(wizard_id)._iter_file(cr)

        headers = [
            ("Content-Type", MIMETYPES[file_format]),
            ("Content-Disposition", http.content_disposition(filename)),
            ("Cache-Control", "no-store"),
        ]
        return Response(stream(), headers=headers, direct_passthrough=True)
